// relay's live reactions demo: publishes with fetch() to relay's HTTP API and listens with the
// browser's own EventSource to the named events "emote" and "votes" on the room's channel.
"use strict";

const POLL = "main";
const ROOM_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const EMOTES = {  // emote name -> [emoji, animation]; other names still fly, as text
  dolphin: ["🐬", "swim"], applause: ["👏", "float"], heart: ["❤️", "float"], rocket: ["🚀", "float"],
};
const MAX_FLYING = 60;

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const state = {
  config: null, room: "", channel: "", source: null, lastEventId: "",
  shownTotal: -1,  // the newest tally shown; older "votes" events (replays, races) are ignored
  retryTimer: 0, retryDelay: 1000, received: 0,
};

// -- connection ------------------------------------------------------------------------------

function setConnection(name, text) {
  const badge = $("connection");
  badge.dataset.state = name;
  badge.textContent = text;
}

function connect() {
  clearTimeout(state.retryTimer);
  if (state.source) state.source.close();
  let url = "/events/" + encodeURIComponent(state.channel);
  // A new EventSource cannot send the Last-Event-ID header; relay reads the same from the query.
  if (state.lastEventId) url += "?lastEventId=" + encodeURIComponent(state.lastEventId);
  const source = state.source = new EventSource(url);
  setConnection("connecting", "connecting…");

  source.addEventListener("open", () => {
    state.retryDelay = 1000;
    setConnection("connected", "connected");
    resync();  // tallies may have moved while we were away: fetch the current ones
  });
  source.addEventListener("error", () => {
    if (source !== state.source) return;
    setConnection("reconnecting", "reconnecting…");
    if (source.readyState === EventSource.CLOSED) {
      // The browser gave up (an answer that was not a stream): try again ourselves, backing off.
      state.retryTimer = setTimeout(connect, state.retryDelay);
      state.retryDelay = Math.min(state.retryDelay * 2, 15000);
    }
    // Otherwise the browser reconnects by itself and resumes with Last-Event-ID.
  });
  source.addEventListener("emote", (e) => { remember(e); showEmote(parse(e.data)); });
  source.addEventListener("votes", (e) => { remember(e); showVotes(parse(e.data)); });
  source.addEventListener("relay-missed", (e) => {
    const info = parse(e.data) || {};
    showNotice(`Some events could not be replayed (${info.reason || "unknown"}); the tallies were refreshed.`);
    resync();
  });
}

function remember(e) {
  if (e.lastEventId) state.lastEventId = e.lastEventId;
}

function parse(text) {  // relay sends JSON values compact, and strings as they are
  try {
    return JSON.parse(text);
  } catch (err) {
    if (err instanceof SyntaxError) return text;
    throw err;
  }
}

// -- emotes ----------------------------------------------------------------------------------

function showEmote(data) {
  const name = typeof data === "string" ? data : (data && typeof data.emote === "string" ? data.emote : "");
  if (!name) return;
  const known = Object.hasOwn(EMOTES, name);
  const [emoji, motion] = known ? EMOTES[name] : ["✨", "float"];
  const label = name.slice(0, 24);
  const stage = $("stage");
  while (stage.children.length >= MAX_FLYING) stage.firstElementChild.remove();
  const flyer = document.createElement("span");
  flyer.className = `flyer ${motion}`;
  flyer.textContent = known ? emoji : `${emoji} ${label}`;
  flyer.dataset.testid = "flying-emote";
  flyer.dataset.emote = name;
  flyer.style.top = `${10 + Math.random() * 70}%`;
  flyer.style.left = motion === "float" ? `${5 + Math.random() * 85}%` : "";
  flyer.addEventListener("animationend", () => flyer.remove());
  setTimeout(() => flyer.remove(), 8000);  // also when animations do not run (hidden tab)
  stage.append(flyer);
  state.received += 1;
  $("emote-count").textContent = String(state.received);
  $("last-emote").textContent = `${emoji} ${label}`;
}

async function sendEmote(name) {
  await post("/events/" + encodeURIComponent(state.channel), { event: "emote", data: { emote: name } });
}

// -- the poll --------------------------------------------------------------------------------

function pollUrl() {
  return `/demo/api/rooms/${encodeURIComponent(state.room)}/polls/${POLL}`;
}

function renderPoll() {
  $("poll-question").textContent = state.config.question;
  const list = $("poll-options");
  list.replaceChildren();
  for (const option of state.config.options) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.testid = `vote-${option}`;
    button.textContent = option;
    button.addEventListener("click", () => vote(option));
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.dataset.option = option;
    const count = document.createElement("span");
    count.className = "count";
    count.dataset.testid = `tally-${option}`;
    count.textContent = "0";
    item.append(button, bar, count);
    list.append(item);
  }
}

function showVotes(data) {
  if (!data || data.room !== state.room || data.poll !== POLL || typeof data.total !== "number"
      || typeof data.totals !== "object" || data.totals === null) return;  // not ours, or not a tally
  if (data.total < state.shownTotal) return;  // an older snapshot (a replay, or two votes racing)
  state.shownTotal = data.total;
  const counts = state.config.options.map((option) => Number(data.totals[option]) || 0);
  const most = Math.max(1, ...counts);
  for (const [i, option] of state.config.options.entries()) {
    const n = counts[i];
    document.querySelector(`[data-testid="tally-${CSS.escape(option)}"]`).textContent = String(n);
    document.querySelector(`.bar[data-option="${CSS.escape(option)}"]`).style.width = `${(100 * n) / most}%`;
  }
  $("vote-total").textContent = String(data.total);
}

async function resync() {
  state.shownTotal = -1;  // after a reconnect the server's numbers win, even if they went down
  const room = state.room;
  try {
    const response = await fetch(pollUrl(), { cache: "no-store" });
    const body = await response.json();
    if (!response.ok) throw new Error(body.message || response.statusText);
    if (room === state.room) showVotes(body);
    showError("");
  } catch (err) {
    showError(`Could not load the tallies: ${err.message}`);
  }
}

async function vote(option) {
  const body = await post(pollUrl() + "/votes", { option });
  if (body) showVotes(body);
}

// -- helpers ---------------------------------------------------------------------------------

async function post(url, message) {
  try {
    const response = await fetch(url, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(message),
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.message || response.statusText);
    showError("");
    return body;
  } catch (err) {
    showError(`Could not send: ${err.message}`);
    return null;
  }
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function showNotice(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
}

function joinRoom(room) {
  state.room = room;
  state.channel = state.config.channel_prefix + room;
  state.lastEventId = "";
  state.shownTotal = -1;
  $("room-name").textContent = room;
  $("channel").textContent = state.channel;
  $("room-input").value = room;
  showNotice("");
  renderPoll();
  const url = new URL(location.href);
  url.searchParams.set("room", room);
  history.replaceState(null, "", url);
  connect();
}

async function main() {
  const response = await fetch("/demo/api/config");
  state.config = await response.json();
  document.querySelectorAll("[data-emote]").forEach((button) => {
    button.addEventListener("click", () => sendEmote(button.dataset.emote));
  });
  $("room-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const room = $("room-input").value.trim();
    if (ROOM_NAME.test(room)) joinRoom(room);
    else showError("A room name is 1 to 64 of A-Z a-z 0-9 _ . -");
  });
  const asked = new URLSearchParams(location.search).get("room") || "";
  joinRoom(ROOM_NAME.test(asked) ? asked : state.config.default_room);
}

main().catch((err) => showError(`The page could not start: ${err.message}`));
