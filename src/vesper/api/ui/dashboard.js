// The Vesper dashboard: polls this node's API and draws what it says.
//
// Hand-written, no build step, no library: it runs as served. Everything it shows comes
// from this node (/api/status every POLL_MS, /api/conflicts and /api/quarantine every
// SLOW_POLL_MS, /ready), and every value from there goes into the page as text
// (textContent, SVG attributes), never as markup: quarantined messages are hostile by
// nature. Fields the status does not have are left out or computed from what it has
// (a peer's state from when it was last heard and from revisions), so the page works
// with older and newer nodes alike.
"use strict";

(() => {
  const POLL_MS = 1500;
  const SLOW_POLL_MS = 5000;
  const HISTORY_MS = 5 * 60 * 1000;
  /** A peer whose difference has not shrunk for this long is shown as stuck. */
  const STUCK_MS = 30 * 1000;
  /** Used until /ui/settings answers: the node's default replication_peer_gone_after. */
  const DEFAULT_GONE_AFTER_S = 60;
  const RATE_WINDOW_MS = 10 * 1000;
  /** A difference younger than this is taken for changesets in flight (as the node's
   *  own peer states do): a busy node's peers always trail it by a second or so. */
  const IN_FLIGHT_S = 10;
  /** A difference shows as a progress bar once this old, or at once for a peer that
   *  is back from gone, or that the node calls catching up or stuck. */
  const BAR_AFTER_S = 5;
  const MAX_ROWS = 200;
  const STATES = {
    in_sync: "in sync",
    catching_up: "catching up",
    stuck: "stuck",
    gone: "gone",
    diverged: "diverged",
  };
  /** Peer fields the table shows in columns of their own; any other is shown as is.
   *  (Older nodes: `lag`, `last_seen`, `seconds_since_seen` and no state.) */
  const PEER_FIELDS = new Set([
    "state",
    "diverged",
    "revision",
    "digest",
    "behind_us",
    "behind_us_s",
    "behind_us_seconds",
    "ahead_of_us",
    "ahead_of_us_s",
    "ahead_of_us_seconds",
    "lag",
    "channel",
    "channels",
    "last_heard",
    "seconds_since_heard",
    "last_heard_s",
    "last_seen",
    "seconds_since_seen",
  ]);
  const SVG_NS = "http://www.w3.org/2000/svg";

  const app = {
    settings: null,
    session: null,
    status: null,
    ready: null,
    conflicts: null,
    quarantine: null,
    slowAt: 0,
    heldSeen: null,
    downSince: null,
    paused: false,
    timer: null,
    samples: [],
    connected: { value: null, since: null },
    peers: new Map(),
    ownCatchup: { key: null, bootstrap: false },
    rendered: new Map(),
    openDetails: new Set(),
  };

  // -- building DOM without markup ------------------------------------------------------

  function fill(node, attrs, children) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const h = (tag, attrs, ...children) => fill(document.createElement(tag), attrs, children);
  const svg = (tag, attrs, ...children) =>
    fill(document.createElementNS(SVG_NS, tag), attrs, children);
  const $ = (id) => document.getElementById(id);

  // -- formatting -----------------------------------------------------------------------

  const isNumber = (v) => typeof v === "number" && Number.isFinite(v);
  /** The first of `values` that is a number; null if none is. */
  const firstNumber = (...values) => {
    for (const v of values) if (isNumber(v)) return v;
    return null;
  };
  const num = (v) =>
    isNumber(v) ? v.toLocaleString("en-US") : v === null || v === undefined ? "—" : String(v);
  const humanize = (key) => key.replace(/_/g, " ");
  function rate(v) {
    if (!isNumber(v)) return "—";
    return v >= 100 ? Math.round(v).toLocaleString("en-US") : v.toFixed(v >= 10 ? 1 : 2);
  }
  function ago(seconds) {
    if (!isNumber(seconds)) return "—";
    if (seconds < 90) return `${seconds.toFixed(1)} s ago`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 172800) return `${Math.round(seconds / 3600)} h ago`;
    return `${Math.round(seconds / 86400)} days ago`;
  }
  function clock(iso) {
    if (!iso) return "—";
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleTimeString();
  }
  function compact(value, limit = 160) {
    let text;
    try {
      text = JSON.stringify(value);
    } catch {
      text = String(value);
    }
    if (text === undefined) text = String(value);
    return text.length > limit ? `${text.slice(0, limit - 1)}…` : text;
  }
  function shown(value) {
    if (value === null || value === undefined) return "—";
    if (isNumber(value)) return num(value);
    if (typeof value === "string") return value.length > 40 ? `${value.slice(0, 39)}…` : value;
    return compact(value, 80);
  }

  // -- revisions: "A.3,B.12" ------------------------------------------------------------

  function parseRevision(text) {
    const out = new Map();
    for (const part of String(text || "").split(",")) {
      const dot = part.lastIndexOf(".");
      if (dot > 0) out.set(part.slice(0, dot).trim(), Number(part.slice(dot + 1)) || 0);
    }
    return out;
  }
  /** Changesets `other` has that `have` lacks. */
  function lacking(have, other) {
    let n = 0;
    for (const [branch, counter] of other) n += Math.max(0, counter - (have.get(branch) || 0));
    return n;
  }

  // -- fetching -------------------------------------------------------------------------

  async function getJSON(path, accept = [200]) {
    const response = await fetch(path, {
      cache: "no-store",
      credentials: "same-origin",
      headers: { accept: "application/json" },
    });
    if (response.status === 401) {
      const error = new Error("login needed");
      error.login = true;
      throw error;
    }
    if (!accept.includes(response.status)) {
      throw new Error(`${path}: ${response.status} ${await errorText(response)}`);
    }
    return response.json();
  }
  async function errorText(response) {
    try {
      const body = await response.json();
      return body && typeof body.error === "string" ? body.error : "";
    } catch {
      return "";
    }
  }

  function schedule(ms = POLL_MS) {
    clearTimeout(app.timer);
    if (!app.paused) app.timer = setTimeout(poll, ms);
  }

  async function poll() {
    let now;
    try {
      now = await refresh();
    } catch (error) {
      if (error.login) {
        showLogin();
        return;
      }
      if (app.downSince === null) app.downSince = Date.now();
      setLive("down", `node unreachable since ${new Date(app.downSince).toLocaleTimeString()}`);
      showBanner(`Cannot read this node's status: ${error.message || error}`);
      schedule();
      return;
    }
    schedule();
    // Outside the try: a bug in drawing is an error in the console (and fails the
    // browser tests), not a node that looks unreachable; the polling goes on.
    hideLogin();
    record(app.status, now);
    render(now);
  }

  /** Everything the page shows, fetched; returns the time of the answer. */
  async function refresh() {
    const status = await getJSON("/api/status");
    if (!app.settings) app.settings = await getJSON("/ui/settings").catch(() => null);
    const now = Date.now();
    const held = status.replication && status.replication.quarantine_held;
    const quarantineMoved = app.quarantine !== null && held !== app.heldSeen;
    if (now - app.slowAt >= SLOW_POLL_MS || quarantineMoved || app.conflicts === null) {
      app.slowAt = now;
      app.heldSeen = held;
      const [conflicts, quarantine] = await Promise.all([
        getJSON("/api/conflicts").catch(() => null),
        getJSON("/api/quarantine?limit=100").catch(() => null),
      ]);
      app.conflicts = conflicts ? conflicts.conflicts : null;
      app.quarantine = quarantine ? quarantine.quarantine : null;
    }
    app.ready = await getJSON("/ready", [200, 503]).catch(() => null);
    app.status = status;
    app.downSince = null;
    return now;
  }

  // -- login ----------------------------------------------------------------------------

  function showLogin() {
    app.paused = true;
    clearTimeout(app.timer);
    $("login").hidden = false;
    $("logout").hidden = true;
    setLive("starting", "log in to see this node");
    $("token").focus();
  }
  function hideLogin() {
    if ($("login").hidden) return;
    $("login").hidden = true;
    $("login-error").textContent = "";
  }
  async function loadSession() {
    try {
      app.session = await getJSON("/ui/session");
      $("logout").hidden = !(app.session && app.session.session);
    } catch {
      app.session = null;
    }
  }
  async function login(event) {
    event.preventDefault();
    const input = $("token");
    const message = $("login-error");
    message.textContent = "";
    let response;
    try {
      response = await fetch("/ui/session", {
        method: "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ token: input.value }),
      });
    } catch (error) {
      message.textContent = `The node did not answer: ${error.message || error}`;
      return;
    }
    if (response.ok) {
      input.value = "";
      app.paused = false;
      hideLogin();
      await loadSession();
      poll();
      return;
    }
    const text = await errorText(response);
    message.textContent =
      response.status === 429
        ? `${text || "Too many failed logins."}`
        : text || `Login failed (${response.status}).`;
  }
  async function logout() {
    await fetch("/ui/session", { method: "DELETE", credentials: "same-origin" }).catch(() => null);
    app.session = null;
    showLogin();
  }

  // -- history kept in the page ---------------------------------------------------------

  function record(status, now) {
    const mine = parseRevision(status.revision);
    let applied = 0;
    for (const [branch, counter] of mine) if (branch !== status.branch_id) applied += counter;
    app.samples.push({ t: now, own: mine.get(status.branch_id) || 0, applied });
    while (app.samples.length && app.samples[0].t < now - HISTORY_MS) app.samples.shift();

    const replication = status.replication || {};
    const connected = replication.connected || null;
    if (connected !== app.connected.value) app.connected = { value: connected, since: now };
  }

  /** A peer as the table and the picture show it; tracks progress between polls. */
  function peerView(name, info, mine, now) {
    const theirs = parseRevision(info.revision);
    const weLack = firstNumber(info.ahead_of_us, info.lag) ?? lacking(mine, theirs);
    const theyLack = firstNumber(info.behind_us) ?? lacking(theirs, mine);
    const heard = info.last_heard || info.last_seen || "";
    let silentS = firstNumber(info.seconds_since_heard, info.last_heard_s, info.seconds_since_seen);
    if (silentS === null && heard && !Number.isNaN(Date.parse(heard))) {
      // Only a time: measured with this browser's clock, which may differ a little.
      silentS = Math.max(0, (now - Date.parse(heard)) / 1000);
    }
    let track = app.peers.get(name);
    if (!track) {
      track = {
        history: [],
        progressAt: now,
        maxTheyLack: 0,
        maxWeLack: 0,
        theySince: null,
        weSince: null,
        wasGone: false,
      };
      app.peers.set(name, track);
    }
    if (theyLack === 0) track.theySince = null;
    else if (track.theySince === null) track.theySince = now;
    if (weLack === 0) track.weSince = null;
    else if (track.weSince === null) track.weSince = now;
    const theyAgeS =
      firstNumber(info.behind_us_s, info.behind_us_seconds) ??
      (track.theySince === null ? 0 : (now - track.theySince) / 1000);
    const weAgeS =
      firstNumber(info.ahead_of_us_s, info.ahead_of_us_seconds) ??
      (track.weSince === null ? 0 : (now - track.weSince) / 1000);
    const total = weLack + theyLack;
    const last = track.history.length ? track.history[track.history.length - 1] : null;
    if (total === 0 || !last || total < last.total) track.progressAt = now;
    track.maxTheyLack = theyLack === 0 ? 0 : Math.max(track.maxTheyLack, theyLack);
    track.maxWeLack = weLack === 0 ? 0 : Math.max(track.maxWeLack, weLack);
    track.history.push({ t: now, total, theyLack, weLack });
    while (track.history.length && track.history[0].t < now - RATE_WINDOW_MS) {
      track.history.shift();
    }

    const goneAfter =
      (app.settings && app.settings.replication_peer_gone_after) || DEFAULT_GONE_AFTER_S;
    let state = typeof info.state === "string" ? info.state : null;
    const derived = state === null;
    // Same revision, other data: worse than any lag, so it is what the row says.
    if (info.diverged === true && state !== "gone") state = "diverged";
    if (derived) {
      if (silentS !== null && silentS >= goneAfter) {
        state = "gone";
      } else if (total === 0 || Math.max(theyAgeS, weAgeS) < IN_FLIGHT_S) {
        state = "in_sync";
      } else {
        state = now - track.progressAt > STUCK_MS ? "stuck" : "catching_up";
      }
    }
    if (state === "gone") track.wasGone = true;
    else if (total === 0) track.wasGone = false;
    const returning = track.wasGone && state !== "gone";
    const busy = returning || state === "catching_up" || state === "stuck";
    const first = track.history[0];
    const span = first ? (now - first.t) / 1000 : 0;
    const channels = Array.isArray(info.channels)
      ? info.channels
      : info.channel
        ? [info.channel]
        : [];
    return {
      name,
      info,
      state,
      derived,
      silentS,
      heard,
      returning,
      weLack,
      theyLack,
      weBar: weLack > 0 && (busy || weAgeS >= BAR_AFTER_S),
      theyBar: theyLack > 0 && (busy || theyAgeS >= BAR_AFTER_S),
      channels,
      maxTheyLack: track.maxTheyLack,
      maxWeLack: track.maxWeLack,
      theyRate: span > 0 ? Math.max(0, (first.theyLack - theyLack) / span) : null,
      weRate: span > 0 ? Math.max(0, (first.weLack - weLack) / span) : null,
    };
  }

  // -- rendering ------------------------------------------------------------------------

  function setLive(kind, text) {
    const live = $("live");
    live.dataset.live = kind;
    live.textContent = text;
  }
  function showBanner(text) {
    const banner = $("banner");
    banner.hidden = !text;
    banner.textContent = text || "";
  }
  /** Re-render (through `draw`) only when `data` changed: keeps selections and open rows. */
  function renderIfChanged(key, data, draw) {
    const text = JSON.stringify(data === undefined ? null : data);
    if (app.rendered.get(key) === text) return;
    app.rendered.set(key, text);
    draw();
  }

  function render(now) {
    const status = app.status;
    const replication = status.replication || {};
    const mine = parseRevision(status.revision);
    const peers = Object.entries(replication.peers || {})
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([name, info]) => peerView(name, info || {}, mine, now));
    document.title = `Vesper ${status.branch_id}`;
    $("node-name").textContent = status.branch_id;
    setLive("ok", `live · ${new Date(now).toLocaleTimeString()}`);

    const problems = [];
    if (app.ready && app.ready.ready === false) {
      problems.push(`Not ready: ${(app.ready.reasons || []).join("; ")}`);
    }
    if (replication.enabled && !replication.connected) problems.push("Not connected to a broker.");
    if (Array.isArray(replication.problems)) {
      for (const problem of replication.problems) {
        if (!problems.some((p) => p.includes(problem))) problems.push(`${problem}.`);
      }
    }
    if (Array.isArray(replication.refused_by) && replication.refused_by.length) {
      problems.push(`Peers refusing this node's key: ${replication.refused_by.join(", ")}`);
    }
    showBanner(problems.join(" "));

    renderNode(status, replication, now);
    renderPeers(peers, replication.enabled);
    renderTopology(status, replication, peers);
    renderProgress(status, replication, peers);
    renderChart();
    renderIfChanged("conflicts", app.conflicts, renderConflicts);
    renderIfChanged(
      "quarantine",
      [
        app.quarantine,
        replication.quarantined,
        replication.forks,
        replication.quarantine_held,
        replication.pending_detail,
        replication.branch_claims,
        replication.refused_by,
      ],
      () => renderQuarantine(replication),
    );
  }

  function renderNode(status, replication, now) {
    const fields = [];
    const add = (key, label, value, className) => {
      fields.push(
        h("dt", { text: label }),
        h("dd", { "data-field": key, class: className }, value),
      );
    };
    add("branch_id", "Branch", status.branch_id);
    add("public_key", "Public key", status.public_key || "— (does not replicate)", "mono");
    const ready = app.ready;
    add(
      "ready",
      "Ready",
      ready ? (ready.ready ? "yes" : `no: ${(ready.reasons || []).join("; ")}`) : "—",
    );
    add("revision", "Revision", status.revision || "(empty)", "mono");
    add("objects", "Objects", num(status.objects));
    add(
      "digest",
      "Digest",
      h("span", { title: status.digest, text: `${String(status.digest || "").slice(0, 16)}…` }),
      "mono",
    );
    add("outbox", "Outbox", `${num(status.outbox)} changesets not yet confirmed by the broker`);
    add("pending", "Pending", `${num(status.pending)} changesets waiting for a predecessor`);
    if (isNumber(replication.apply_backlog)) {
      add(
        "apply_backlog",
        "Apply backlog",
        `${num(replication.apply_backlog)} messages received, not yet applied`,
      );
    }
    if (!replication.enabled) {
      add("broker", "Broker", "replication is off on this node");
    } else {
      const reported = replication.connected
        ? replication.connected_since
        : replication.disconnected_since;
      const since = reported
        ? `since ${clock(reported)}`
        : app.connected.since
          ? `since ${new Date(app.connected.since).toLocaleTimeString()} (seen by this page)`
          : "";
      const broker = replication.connected
        ? [replication.connected, replication.broker ? ` (${replication.broker})` : "", ` ${since}`]
        : `not connected ${since}`;
      add("broker", "Broker", broker);
      if (replication.last_error) add("last_error", "Last broker error", replication.last_error);
      add("channels", "Channels", (replication.channels || [replication.channel]).join(", "));
      add(
        "messages",
        "Messages",
        `${num(replication.messages_sent)} sent, ${num(replication.messages_received)} received` +
          `, ${num(replication.send_errors)} send / ${num(replication.receive_errors)} receive errors`,
      );
      add("trust", "Trust", replication.trust || "—");
      add("last_message", "Last message", clock(replication.last_message_received));
    }
    $("node").replaceChildren(...fields);
  }

  function digestCell(digest) {
    if (typeof digest !== "string") return "—";
    if (app.status && digest === app.status.digest)
      return h("span", { title: digest, text: "same as here" });
    return h("span", { title: digest, text: `${digest.slice(0, 12)}…` });
  }

  function lackingFor(seconds) {
    return isNumber(seconds) && seconds > 0
      ? h("div", {
          class: "muted",
          text: `for ${seconds < 90 ? `${seconds.toFixed(0)} s` : ago(seconds).replace(" ago", "")}`,
        })
      : null;
  }

  function renderPeers(peers, replicating) {
    const table = $("peers");
    $("peer-count").textContent = peers.length ? `(${peers.length})` : "";
    if (!peers.length) {
      const text = replicating ? "No peer heard from yet." : "Replication is off on this node.";
      table.replaceChildren(h("caption", { class: "empty", text }));
      return;
    }
    const withDigest = peers.some((p) => typeof p.info.digest === "string");
    const extras = [];
    for (const peer of peers) {
      for (const key of Object.keys(peer.info)) {
        if (!PEER_FIELDS.has(key) && !extras.includes(key)) extras.push(key);
      }
    }
    const head = h(
      "tr",
      {},
      h("th", { text: "Peer" }),
      h("th", { text: "State" }),
      h("th", { text: "Channel" }),
      h("th", { text: "Announced revision" }),
      h("th", {
        class: "num",
        text: "Ahead of us",
        title: "changesets the peer has and this node lacks",
      }),
      h("th", {
        class: "num",
        text: "Behind us",
        title: "changesets this node has and the peer has not announced",
      }),
      withDigest
        ? h("th", { text: "Digest", title: "LtHash of the live objects, as the peer announced it" })
        : null,
      h("th", { text: "Last heard" }),
      extras.map((key) => h("th", { text: humanize(key) })),
    );
    const rows = peers.map((peer) =>
      h(
        "tr",
        { "data-peer": peer.name, "data-state": peer.state },
        h("td", { class: "mono", text: peer.name }),
        h(
          "td",
          {},
          h("span", {
            class: peer.derived ? "state derived" : "state",
            "data-state": peer.state,
            title: peer.derived ? "judged by this page from the status" : "as the node reports it",
            text: STATES[peer.state] || peer.state,
          }),
        ),
        h("td", { text: peer.channels.join(", ") || "—" }),
        h("td", { class: "mono", text: peer.info.revision || "(empty)" }),
        h(
          "td",
          { class: "num", "data-field": "ahead_of_us" },
          num(peer.weLack),
          lackingFor(firstNumber(peer.info.ahead_of_us_s, peer.info.ahead_of_us_seconds)),
        ),
        h(
          "td",
          { class: "num", "data-field": "behind_us" },
          num(peer.theyLack),
          lackingFor(firstNumber(peer.info.behind_us_s, peer.info.behind_us_seconds)),
        ),
        withDigest
          ? h("td", { class: "mono", "data-field": "digest" }, digestCell(peer.info.digest))
          : null,
        h("td", { title: peer.heard, "data-field": "last_heard", text: ago(peer.silentS) }),
        extras.map((key) => h("td", { "data-field": key, text: shown(peer.info[key]) })),
      ),
    );
    table.replaceChildren(h("thead", {}, head), h("tbody", {}, rows));
  }

  // -- topology -------------------------------------------------------------------------

  /** Channels as boxes with their members inside; nodes on several channels (hubs)
   *  drawn below them with a line to each of their channels. */
  function renderTopology(status, replication, peers) {
    const target = $("topology");
    if (!replication.enabled) {
      target.replaceChildren(h("p", { class: "empty", text: "Replication is off on this node." }));
      $("legend").replaceChildren();
      return;
    }
    const myChannels = replication.channels || (replication.channel ? [replication.channel] : []);
    const nodes = [
      { name: status.branch_id, channels: myChannels, state: "self", self: true },
      ...peers.map((p) => ({ name: p.name, channels: p.channels, state: p.state, self: false })),
    ];
    const channels = [];
    for (const node of nodes)
      for (const c of node.channels) if (!channels.includes(c)) channels.push(c);
    const members = new Map(channels.map((c) => [c, []]));
    const hubs = [];
    for (const node of nodes) {
      if (node.channels.length > 1) hubs.push(node);
      else if (node.channels.length === 1) members.get(node.channels[0]).push(node);
    }

    const PER_ROW = 4;
    const CELL = 74;
    const GAP = 46;
    const TOP = 8;
    const boxes = [];
    let x = 10;
    for (const channel of channels) {
      const count = Math.max(1, members.get(channel).length);
      const cols = Math.min(PER_ROW, count);
      const rows = Math.ceil(count / PER_ROW);
      const box = { channel, x, y: TOP, w: Math.max(150, cols * CELL + 20), h: rows * CELL + 34 };
      boxes.push(box);
      x += box.w + GAP;
    }
    const boxesBottom = Math.max(TOP + 80, ...boxes.map((b) => b.y + b.h));
    const width = Math.max(420, x - GAP + 10);
    const hubY = boxesBottom + 62;
    const height = hubs.length ? hubY + 42 : boxesBottom + 12;
    const boxOf = new Map(boxes.map((b) => [b.channel, b]));

    const parts = [];
    // Hubs: at the mean of their channels' centres, pushed apart when they crowd.
    const placed = hubs
      .map((hub) => {
        const centres = hub.channels.map((c) => boxOf.get(c)).map((b) => b.x + b.w / 2);
        return { node: hub, x: centres.reduce((a, b) => a + b, 0) / centres.length };
      })
      .sort((a, b) => a.x - b.x);
    for (let i = 1; i < placed.length; i++) {
      placed[i].x = Math.max(placed[i].x, placed[i - 1].x + CELL);
    }
    const svgWidth = Math.max(width, ...placed.map((p) => p.x + 40));
    for (const hub of placed) {
      for (const c of hub.node.channels) {
        const box = boxOf.get(c);
        const edgeX = Math.min(box.x + box.w - 12, Math.max(box.x + 12, hub.x));
        parts.push(
          svg("line", { class: "link", x1: hub.x, y1: hubY, x2: edgeX, y2: box.y + box.h }),
        );
      }
    }
    for (const box of boxes) {
      parts.push(
        svg("rect", { class: "channel", x: box.x, y: box.y, width: box.w, height: box.h, rx: 8 }),
        svg("text", { class: "channel-name", x: box.x + 10, y: box.y + 17, text: box.channel }),
      );
      members.get(box.channel).forEach((node, i) => {
        const cx = box.x + 10 + CELL / 2 + (i % PER_ROW) * CELL;
        const cy = box.y + 34 + CELL / 2 - 10 + Math.floor(i / PER_ROW) * CELL;
        parts.push(drawNode(node, cx, cy));
      });
    }
    for (const hub of placed) parts.push(drawNode(hub.node, hub.x, hubY, true));
    const picture = svg(
      "svg",
      {
        viewBox: `0 0 ${svgWidth} ${height}`,
        width: svgWidth,
        role: "img",
        "aria-label": `topology: ${channels.length} channels, ${nodes.length} nodes, ${hubs.length} hubs`,
      },
      parts,
    );
    target.replaceChildren(picture);
    renderIfChanged("legend", null, () =>
      $("legend").replaceChildren(
        ...Object.entries(STATES).map(([state, text]) =>
          h("li", {}, h("span", { class: "swatch", "data-color": state }), text),
        ),
        h("li", {}, "ringed: this node; below the channels: hubs"),
      ),
    );
    for (const swatch of document.querySelectorAll("#legend .swatch")) {
      swatch.style.background = colour(swatch.dataset.color);
    }
  }

  function colour(state) {
    const name = {
      in_sync: "--in-sync",
      catching_up: "--catching-up",
      stuck: "--stuck",
      gone: "--gone",
      diverged: "--diverged",
      self: "--accent",
    }[state];
    return getComputedStyle(document.documentElement)
      .getPropertyValue(name || "--unknown")
      .trim();
  }

  function drawNode(node, cx, cy, hub = false) {
    const label = node.name.length > 12 ? `${node.name.slice(0, 11)}…` : node.name;
    return svg(
      "g",
      { class: "topo-node", "data-node": node.name, "data-state": node.state },
      svg("title", {
        text:
          `${node.name}${node.self ? " (this node)" : ""}: ${STATES[node.state] || node.state}` +
          `; channels ${node.channels.join(", ")}`,
      }),
      svg("circle", { cx, cy, r: 15, fill: colour(node.state) }),
      node.self ? svg("circle", { class: "self-ring", cx, cy, r: 20 }) : null,
      svg("text", { class: "node-label", x: cx, y: cy + 32, "text-anchor": "middle", text: label }),
      hub
        ? svg("text", {
            class: "hub-label",
            x: cx,
            y: cy - 22,
            "text-anchor": "middle",
            text: "hub",
          })
        : null,
    );
  }

  // -- catch-up and bootstrap progress ---------------------------------------------------

  function progressBar(key, label, done, total, detail) {
    const known = isNumber(done) && isNumber(total) && total > 0;
    const share = known ? Math.min(1, Math.max(0, done / total)) : 0;
    const bar = h("div", { class: "fill" });
    bar.style.width = `${(share * 100).toFixed(1)}%`;
    const classes = ["progress"];
    if (!known) classes.push("indeterminate");
    if (known && share >= 1) classes.push("done");
    return h(
      "div",
      { class: classes.join(" "), "data-progress": key },
      h(
        "div",
        { class: "label" },
        h("span", { text: label }),
        h("span", { class: "muted", text: detail }),
      ),
      h(
        "div",
        {
          class: "track",
          role: "progressbar",
          "aria-valuemin": 0,
          "aria-valuemax": known ? total : null,
          "aria-valuenow": known ? done : null,
        },
        bar,
      ),
    );
  }

  function renderProgress(status, replication, peers) {
    const items = [];
    const catchup = replication.catchup;
    const own = app.ownCatchup;
    if (catchup && typeof catchup === "object") {
      const key = `${catchup.peer}`;
      if (own.key !== key) {
        own.key = key;
        own.bootstrap = !status.revision;
      }
      const received = catchup.received;
      const expected = isNumber(catchup.expected) && catchup.expected > 0 ? catchup.expected : null;
      const speed =
        isNumber(catchup.seconds) && catchup.seconds > 0 ? received / catchup.seconds : null;
      const extra = Object.entries(catchup)
        .filter(([k]) => !["peer", "received", "expected", "seconds"].includes(k))
        .map(([k, v]) => `${humanize(k)} ${shown(v)}`);
      items.push(
        progressBar(
          "self",
          `${own.bootstrap ? "Bootstrap" : "Catch-up"} from ${catchup.peer}`,
          received,
          expected,
          [
            `${num(received)}${expected ? ` of ${num(expected)}` : ""} changesets`,
            speed !== null ? `${rate(speed)}/s` : null,
            isNumber(catchup.seconds) ? `${catchup.seconds.toFixed(1)} s` : null,
            ...extra,
          ]
            .filter(Boolean)
            .join(" · "),
        ),
      );
    } else {
      own.key = null;
    }
    // Catch-up answers this node is streaming, by asker: a detail of that peer's bar,
    // whose own figures come from its announcements (a returning node also receives
    // what its durable subscription kept, so the answer is only part of its progress).
    const answering =
      replication.answering && typeof replication.answering === "object"
        ? replication.answering
        : {};
    for (const peer of peers) {
      if (peer.state === "gone") continue;
      const answer = answering[peer.name];
      const answerText =
        answer && typeof answer === "object" && isNumber(answer.expected) && answer.expected > 0
          ? ` · answering its catch-up: ${num(isNumber(answer.applied) ? answer.applied : 0)}` +
            ` of ${num(answer.expected)} applied there`
          : "";
      if (peer.weBar && peer.maxWeLack > 0) {
        items.push(
          progressBar(
            `from-${peer.name}`,
            `This node ← ${peer.name}`,
            peer.maxWeLack - peer.weLack,
            peer.maxWeLack,
            `${num(peer.weLack)} changesets to go` +
              (peer.weRate ? ` · ${rate(peer.weRate)}/s` : ""),
          ),
        );
      }
      if (peer.theyBar && peer.maxTheyLack > 0) {
        items.push(
          progressBar(
            `to-${peer.name}`,
            `${peer.name} ${peer.returning ? "back, catching up" : "catching up"}`,
            peer.maxTheyLack - peer.theyLack,
            peer.maxTheyLack,
            `${num(peer.maxTheyLack - peer.theyLack)} of ${num(peer.maxTheyLack)} changesets` +
              (peer.theyRate ? ` · ${rate(peer.theyRate)}/s` : "") +
              answerText,
          ),
        );
      }
    }
    const queues = [
      ["apply backlog", replication.apply_backlog],
      ["pending", status.pending],
      ["outbox", status.outbox],
      ["catch-up requests sent", replication.catchup_requests_sent],
      ["answered", replication.catchup_requests_answered],
      ["changesets by catch-up", replication.catchup_changesets_received],
    ].filter(([, v]) => v !== undefined && v !== null);
    if (!items.length) {
      items.push(h("p", { class: "empty", text: "Nothing to catch up: every peer in step." }));
    }
    items.push(
      h(
        "div",
        { class: "chips" },
        queues.map(([k, v]) => h("span", { class: "chip", text: `${k} ${num(v)}` })),
      ),
    );
    $("progress").replaceChildren(...items);
  }

  // -- throughput chart -----------------------------------------------------------------

  function rates() {
    const out = [];
    const s = app.samples;
    for (let i = 1; i < s.length; i++) {
      const dt = (s[i].t - s[i - 1].t) / 1000;
      if (dt <= 0) continue;
      out.push({
        t: s[i].t,
        commits: Math.max(0, (s[i].own - s[i - 1].own) / dt),
        applies: Math.max(0, (s[i].applied - s[i - 1].applied) / dt),
      });
    }
    return out;
  }

  function niceMax(v) {
    if (v <= 1) return 1;
    const power = 10 ** Math.floor(Math.log10(v));
    for (const step of [1, 2, 5, 10]) if (v <= step * power) return step * power;
    return 10 * power;
  }

  function renderChart() {
    const W = 600;
    const H = 150;
    const L = 44;
    const B = 20;
    const points = rates();
    const now = Date.now();
    const top = niceMax(Math.max(1, ...points.map((p) => Math.max(p.commits, p.applies))));
    const xOf = (t) => L + ((t - (now - HISTORY_MS)) / HISTORY_MS) * (W - L - 6);
    const yOf = (v) => 6 + (1 - v / top) * (H - B - 6);
    const line = (key) =>
      points.map((p) => `${xOf(p.t).toFixed(1)},${yOf(p[key]).toFixed(1)}`).join(" ");
    const parts = [
      svg("line", { class: "axis", x1: L, y1: H - B, x2: W - 6, y2: H - B }),
      svg("line", { class: "axis", x1: L, y1: 6, x2: L, y2: H - B }),
      svg("text", { class: "tick", x: L - 6, y: 12, "text-anchor": "end", text: `${num(top)}/s` }),
      svg("text", { class: "tick", x: L - 6, y: H - B, "text-anchor": "end", text: "0" }),
      svg("text", { class: "tick", x: L, y: H - 4, text: "5 min ago" }),
      svg("text", { class: "tick", x: W - 6, y: H - 4, "text-anchor": "end", text: "now" }),
    ];
    if (points.length > 1) {
      parts.push(svg("polyline", { class: "commits", points: line("commits") }));
      parts.push(svg("polyline", { class: "applies", points: line("applies") }));
    }
    $("chart").replaceChildren(
      svg(
        "svg",
        {
          viewBox: `0 0 ${W} ${H}`,
          width: W,
          role: "img",
          "aria-label": "commits and applies per second",
        },
        parts,
      ),
    );
    const last = points[points.length - 1];
    const recent = points.filter((p) => p.t >= now - RATE_WINDOW_MS);
    const mean = (key) =>
      recent.length ? recent.reduce((a, p) => a + p[key], 0) / recent.length : null;
    $("chart-legend").replaceChildren(
      h(
        "li",
        { "data-field": "commits_per_s" },
        swatch("--accent"),
        `commits/s (this node) ${last ? rate(mean("commits")) : "—"}`,
      ),
      h(
        "li",
        { "data-field": "applies_per_s" },
        swatch("--catching-up"),
        `applies/s (from peers) ${last ? rate(mean("applies")) : "—"}`,
      ),
    );
  }

  function swatch(variable) {
    const dot = h("span", { class: "swatch" });
    dot.style.background = getComputedStyle(document.documentElement)
      .getPropertyValue(variable)
      .trim();
    return dot;
  }

  // -- conflicts ------------------------------------------------------------------------

  function side(write) {
    if (!write || typeof write !== "object") return "—";
    const value = write.removed ? "(removed)" : compact(write.value);
    return [
      h("span", { class: "value", text: value }),
      h("span", { class: "muted", text: ` by ${write.origin || "?"} (${write.changeset || "?"})` }),
    ];
  }

  function renderConflicts() {
    const table = $("conflicts");
    const conflicts = app.conflicts;
    if (conflicts === null) {
      $("conflict-count").textContent = "";
      table.replaceChildren(
        h("caption", {
          class: "empty",
          text: "Conflicts could not be read (history needs save_history).",
        }),
      );
      return;
    }
    $("conflict-count").textContent = `(${conflicts.length})`;
    if (!conflicts.length) {
      table.replaceChildren(h("caption", { class: "empty", text: "No conflicts." }));
      return;
    }
    const rows = conflicts.slice(0, MAX_ROWS).map((c) =>
      h(
        "tr",
        { "data-id": c.id, "data-property": c.property === null ? "" : c.property },
        h("td", { class: "mono", text: c.id }),
        h("td", { class: "mono", text: c.property === null ? "(existence)" : c.property }),
        h("td", { class: "value" }, side(c.winner)),
        h(
          "td",
          { class: "value" },
          (c.losers || []).map((loser) => h("div", {}, side(loser))),
        ),
      ),
    );
    const more =
      conflicts.length > MAX_ROWS
        ? h("caption", { class: "empty", text: `${conflicts.length - MAX_ROWS} more not shown` })
        : null;
    table.replaceChildren(
      ...(more ? [more] : []),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { text: "Object" }),
          h("th", { text: "Property" }),
          h("th", { text: "Winner" }),
          h("th", { text: "Losers" }),
        ),
      ),
      h("tbody", {}, rows),
    );
  }

  // -- quarantine, forks, pending, trust -----------------------------------------------

  function renderQuarantine(replication) {
    const chips = [];
    const chip = (text, bad, field) =>
      chips.push(h("span", { class: bad ? "chip bad" : "chip", "data-field": field, text }));
    if (isNumber(replication.forks))
      chip(`forks ${num(replication.forks)}`, replication.forks > 0, "forks");
    if (isNumber(replication.quarantine_held))
      chip(`held ${num(replication.quarantine_held)}`, false, "held");
    for (const [reason, count] of Object.entries(replication.quarantined || {})) {
      chip(`${humanize(reason)} × ${num(count)} since start`, true, `reason-${reason}`);
    }
    const claims = replication.branch_claims || {};
    if (Object.keys(claims).length)
      chip(`branch claims ${compact(claims, 120)}`, true, "branch_claims");
    if ((replication.refused_by || []).length) {
      chip(`refused by ${replication.refused_by.join(", ")}`, true, "refused_by");
    }
    $("quarantine-summary").replaceChildren(...chips);

    const pending = Array.isArray(replication.pending_detail) ? replication.pending_detail : [];
    $("pending").replaceChildren(
      ...pending.map((p) =>
        h(
          "p",
          { class: "muted", "data-pending": p.origin },
          `${num(p.waiting)} from ${p.origin} wait (first ${p.first}), missing ${(p.missing || []).join(", ")}` +
            `; announced by ${(p.announced_by || []).join(", ") || "no peer yet"}`,
        ),
      ),
    );

    const table = $("quarantine");
    const entries = app.quarantine;
    if (entries === null) {
      $("quarantine-count").textContent = "";
      table.replaceChildren(
        h("caption", { class: "empty", text: "The quarantine could not be read." }),
      );
      return;
    }
    $("quarantine-count").textContent = `(${entries.length}${entries.length >= 100 ? "+" : ""})`;
    if (!entries.length) {
      table.replaceChildren(h("caption", { class: "empty", text: "Nothing refused." }));
      return;
    }
    const rows = entries.map((e) => {
      const headers = e.headers || {};
      const details = h(
        "details",
        { "data-seq": e.seq, open: app.openDetails.has(String(e.seq)) },
        h("summary", { text: "message" }),
        h("pre", { text: `${compact(headers, 2000)}\n\n${e.body_excerpt || ""}` }),
      );
      details.addEventListener("toggle", () => {
        if (details.open) app.openDetails.add(String(e.seq));
        else app.openDetails.delete(String(e.seq));
      });
      return h(
        "tr",
        {
          "data-seq": e.seq,
          "data-reason": e.reason,
          class: /fork|chain/.test(e.reason || "") ? "fork" : null,
        },
        h("td", { title: e.time, text: clock(e.time) }),
        h("td", { class: "mono", text: e.reason }),
        h("td", { class: "mono", text: headers.clientid || "—" }),
        h("td", { class: "value", text: e.detail || "" }),
        h("td", {}, details),
      );
    });
    table.replaceChildren(
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { text: "Time" }),
          h("th", { text: "Reason" }),
          h("th", { text: "From" }),
          h("th", { text: "Detail" }),
          h("th", { text: "Message" }),
        ),
      ),
      h("tbody", {}, rows),
    );
  }

  // -- start ----------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
    loadSession().then(poll);
  });
})();
