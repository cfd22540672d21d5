// relay's live reactions demo: publishes with fetch() to relay's HTTP API and listens with the
// browser's own EventSource to the named events "emote", "votes" and "relay-presence" on the
// room's channel. Emotes are SVG images shipped with relay, so they look the same on a machine
// without a colour-emoji font.
"use strict";

const POLL = "main";
const ROOM_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const STATIC = "/demo/static/";
const EMOTES = {  // emote name -> [picture, animation]; other names fly as a sparkle and their name
  dolphin: ["dolphin.svg", "swim"], applause: ["applause.svg", "float"], heart: ["heart.svg", "float"],
  rocket: ["rocket.svg", "float"],
};
const UNKNOWN_EMOTE = ["sparkle.svg", "float"];
const MAX_FLYING = 60;
const RETRY_MS = 3000;  // a failed tallies fetch is tried again after this long

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const state = {
  config: null, room: "", channel: "", source: null, lastEventId: "",
  shownTotal: -1,  // the newest tally shown; older "votes" events (replays, races) are ignored
  retryTimer: 0, retryDelay: 1000, resyncTimer: 0, received: 0, yourVote: null,
};

// -- words -----------------------------------------------------------------------------------

function plural(n, one, many) {
  return n === 1 ? one : many;
}

/** A relay answer that was not 2xx: ``message`` is relay's own JSON message when there is one. */
class RelayError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

/** What to tell a person about ``err``, never the browser's raw text such as "Failed to fetch". */
function explain(err, what) {
  if (err instanceof RelayError) return `${what}: ${err.message}`;
  return `Can't reach the relay — ${what.charAt(0).toLowerCase()}${what.slice(1)}. Is it running?`;
}

/** fetch() relay and answer its JSON body; a RelayError for an error answer. */
async function call(url, options = {}) {
  const response = await fetch(url, { cache: "no-store", ...options });
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    // Not JSON: a proxy's HTML error page, say. Described below by its status.
  }
  if (!response.ok || body === null) {
    const message = body && typeof body.message === "string" ? body.message
      : `relay answered ${response.status} ${response.statusText}`.trim();
    throw new RelayError(response.status, message, body);
  }
  return body;
}

function post(url, message) {
  return call(url, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(message),
  });
}

// -- connection ------------------------------------------------------------------------------

function setConnection(name, text) {
  const badge = $("connection");
  badge.dataset.state = name;
  badge.textContent = text;
}

function streamUrl() {
  // presence=1: relay also sends "relay-presence" events with the number of open streams.
  const params = new URLSearchParams({ presence: "1" });
  // A new EventSource cannot send the Last-Event-ID header; relay reads the same from the query.
  if (state.lastEventId) params.set("lastEventId", state.lastEventId);
  return `/events/${encodeURIComponent(state.channel)}?${params}`;
}

function connect() {
  clearTimeout(state.retryTimer);
  if (state.source) state.source.close();
  const source = state.source = new EventSource(streamUrl());
  setConnection("connecting", "connecting…");

  source.addEventListener("open", () => {
    state.retryDelay = 1000;
    setConnection("connected", "connected");
    resync();  // tallies may have moved while we were away: fetch the current ones
  });
  source.addEventListener("error", () => {
    if (source !== state.source) return;
    setConnection("reconnecting", "reconnecting…");
    showPresence(null);  // who is here is unknown until the stream is back
    if (source.readyState === EventSource.CLOSED) {
      // The browser gave up (an answer that was not a stream): try again ourselves, backing off.
      state.retryTimer = setTimeout(connect, state.retryDelay);
      state.retryDelay = Math.min(state.retryDelay * 2, 15000);
    }
    // Otherwise the browser reconnects by itself and resumes with Last-Event-ID.
  });
  source.addEventListener("emote", (e) => { remember(e); showEmote(parse(e.data)); });
  source.addEventListener("votes", (e) => { remember(e); showVotes(parse(e.data)); });
  source.addEventListener("relay-presence", (e) => {  // no id: presence is not replayed
    const data = parse(e.data);
    if (data && data.channel === state.channel && Number.isInteger(data.subscribers)) {
      showPresence(data.subscribers);
    }
  });
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

function showPresence(count) {
  const element = $("presence");
  element.hidden = count === null;
  element.textContent = count === null ? "" : `${count} here`;
  element.title = count === null ? "" : `${count} ${plural(count, "page is", "pages are")} open in this room`;
}

// -- emotes ----------------------------------------------------------------------------------

function picture(name, className) {
  const [file] = Object.hasOwn(EMOTES, name) ? EMOTES[name] : UNKNOWN_EMOTE;
  const img = document.createElement("img");
  img.src = STATIC + file;
  img.alt = "";  // the name is always written next to it, or is the button's label
  img.className = className;
  return img;
}

function showEmote(data) {
  const name = typeof data === "string" ? data : (data && typeof data.emote === "string" ? data.emote : "");
  if (!name) return;
  const known = Object.hasOwn(EMOTES, name);
  const [, motion] = known ? EMOTES[name] : UNKNOWN_EMOTE;
  const label = name.slice(0, 24);
  const stage = $("stage");
  while (stage.children.length >= MAX_FLYING) stage.firstElementChild.remove();
  const flyer = document.createElement("span");
  flyer.className = `flyer ${motion}`;
  flyer.append(picture(name, "picture"));
  if (!known) flyer.append(label);  // as text, never markup
  flyer.setAttribute("aria-label", label);
  flyer.dataset.testid = "flying-emote";
  flyer.dataset.emote = name;
  flyer.style.top = `${10 + Math.random() * 70}%`;
  flyer.style.left = motion === "float" ? `${5 + Math.random() * 85}%` : "";
  flyer.addEventListener("animationend", () => flyer.remove());
  setTimeout(() => flyer.remove(), 8000);  // also when animations do not run (hidden tab)
  stage.append(flyer);
  state.received += 1;
  showReceived();
  $("last-emote").replaceChildren(picture(name, "inline"), label);
}

function showReceived() {
  $("emote-count").textContent = String(state.received);
  $("emote-noun").textContent = plural(state.received, "emote", "emotes");
}

async function sendEmote(name) {
  try {
    await post("/events/" + encodeURIComponent(state.channel), { event: "emote", data: { emote: name } });
    showError("");
  } catch (err) {
    showError(explain(err, `Your ${name} was not sent`));
  }
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
    button.dataset.option = option;
    button.setAttribute("aria-pressed", "false");
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
  $("vote-total").textContent = "0";
  $("vote-noun").textContent = "votes";
}

function showYourVote(option) {
  state.yourVote = option || null;
  for (const button of $("poll-options").querySelectorAll("button[data-option]")) {
    button.setAttribute("aria-pressed", String(button.dataset.option === state.yourVote));
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
  $("vote-noun").textContent = plural(data.total, "vote", "votes");
}

async function resync() {
  clearTimeout(state.resyncTimer);
  const room = state.room;
  state.shownTotal = -1;  // after a reconnect the server's numbers win, even if they went down
  try {
    const body = await call(pollUrl());
    if (room !== state.room) return;  // the room changed while we waited
    showVotes(body);
    showYourVote(body.your_vote);
    showError("");
  } catch (err) {
    if (room !== state.room) return;
    if (err instanceof RelayError) {
      showError(explain(err, "The tallies could not be loaded"));
    } else {
      showError("Can't reach the relay — retrying…");
      state.resyncTimer = setTimeout(resync, RETRY_MS);
    }
  }
}

async function vote(option) {
  try {
    const body = await post(pollUrl() + "/votes", { option });
    showVotes(body);
    showYourVote(body.your_vote);
    showError("");
  } catch (err) {
    if (err instanceof RelayError && err.body && typeof err.body.your_vote === "string") {
      showYourVote(err.body.your_vote);  // 409: this browser voted before, perhaps in another tab
    }
    showError(explain(err, "Your vote was not counted"));
  }
}

// -- page ------------------------------------------------------------------------------------

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
  // A new room starts from nothing: no emotes received, no flyers, no tallies, no vote, no count.
  state.received = 0;
  showReceived();
  $("last-emote").textContent = "none yet";
  $("stage").replaceChildren();
  $("room-name").textContent = room;
  $("channel").textContent = state.channel;
  $("room-input").value = room;
  showNotice("");
  showError("");
  showPresence(null);
  renderPoll();
  showYourVote(null);
  const url = new URL(location.href);
  url.searchParams.set("room", room);
  history.replaceState(null, "", url);
  connect();
}

async function loadConfig() {
  for (;;) {
    try {
      const config = await call("/demo/api/config");
      showError("");
      return config;
    } catch (err) {
      showError(err instanceof RelayError ? explain(err, "The page could not start")
        : "Can't reach the relay — retrying…");
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
    }
  }
}

async function main() {
  state.config = await loadConfig();
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
