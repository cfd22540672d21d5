// The Node fan-out server, built the way the talk built it: fastify + fastify-sse-v2, one Redis
// subscriber for the whole process, an EventEmitter fanning each message out, and one
// event-iterator per SSE client. A benchmark peer for relay; not part of relay.
//
//   PORT=8001 REDIS_URL=redis://127.0.0.1:6379 CHANNELS=bench node server.js
//
// Messages on the Redis channels are relay's envelope: {"event": name, "data": any, "channel"?}.
// Streams: GET /events/:channel (channel defaults to the Redis channel name).
"use strict";

const { EventEmitter } = require("events");
const Fastify = require("fastify");
const { FastifySSEPlugin } = require("fastify-sse-v2");
const { EventIterator } = require("event-iterator");
const { createClient } = require("redis");

const port = Number(process.env.PORT || 8001);
const host = process.env.HOST || "127.0.0.1";
const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const channels = (process.env.CHANNELS || "bench").split(",");

const emitter = new EventEmitter();
emitter.setMaxListeners(0); // one listener per connected client

const app = Fastify({ logger: false });
app.register(FastifySSEPlugin);

let ready = false;
app.get("/ready", async (request, reply) => {
  reply.code(ready ? 200 : 503);
  return { ready };
});

app.get("/events/:channel", (request, reply) => {
  const channel = request.params.channel;
  reply.sse(
    new EventIterator(({ push }) => {
      emitter.on(channel, push);
      request.raw.on("close", () => emitter.off(channel, push));
      return () => emitter.off(channel, push);
    })
  );
});

async function main() {
  const subscriber = createClient({ url: redisUrl, name: "node-peer:pubsub" });
  subscriber.on("error", (err) => console.error("redis:", err.message));
  await subscriber.connect();
  await subscriber.subscribe(channels, (message, redisChannel) => {
    let envelope;
    try {
      envelope = JSON.parse(message);
    } catch (err) {
      return;
    }
    const data = typeof envelope.data === "string" ? envelope.data : JSON.stringify(envelope.data);
    emitter.emit(envelope.channel || redisChannel, { event: envelope.event, data });
  });
  await app.listen({ port, host });
  ready = true;
  const stop = () => {
    app.close().finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
