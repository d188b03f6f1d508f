// megdecode live page. Fetches a recording from the ingress in 1 s blocks, forwards it to
// WS /v1/stream as 25 ms chunks at real-time pace, and draws what comes back: a few MEG
// channels, the top-5 images of each decode, the hit rate at image onsets, the latency.
// No dependencies and no build step: the machine serving it may be offline.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const BASE = document.body.dataset.base || "";
  const TRACE_S = 5; // seconds of signal in the trace view
  const KEEP = 20000; // latencies kept for the histogram and percentiles
  const MAX_BUFFERED = 1 << 20; // bytes waiting in the socket before the replay holds its clock
  const TRIAL_CARDS = 12;
  const TOP_K = 5;

  let token = "";
  let current = null;

  // --- plumbing ------------------------------------------------------------------------
  function status(text, error = false) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", error);
    el.dataset.state = error ? "error" : "ok";
  }

  function readUrl() {
    // The token may come in the URL (?token= or #token=); it is then removed from the
    // address bar so that it is not left in the history or a shared screenshot.
    const query = new URLSearchParams(location.search);
    const hash = new URLSearchParams(location.hash.slice(1));
    const given = hash.get("token") || query.get("token");
    if (given) $("token").value = given;
    query.delete("token");
    const rest = query.toString();
    history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : ""));
    return { subject: query.get("subject") || "", run: query.get("run") || "" };
  }

  const authHeaders = () => (token ? { Authorization: `Bearer ${token}` } : {});

  async function api(path, kind) {
    const r = await fetch(BASE + path, { headers: authHeaders(), cache: "no-store" });
    if (!r.ok) {
      let body = { error: String(r.status), detail: r.statusText };
      try { body = await r.json(); } catch (_) { /* not JSON */ }
      throw new Error(`${r.status} ${body.error}: ${body.detail}`);
    }
    return kind === "json" ? r.json() : r.arrayBuffer();
  }

  // A WebSocket cannot carry headers from a browser: the token travels as a subprotocol.
  function b64url(text) {
    let bin = "";
    for (const b of new TextEncoder().encode(text)) bin += String.fromCharCode(b);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  const thumbs = new Map(); // image id -> Promise<object URL | null>
  function thumb(id) {
    if (!thumbs.has(id)) {
      thumbs.set(id, fetch(`${BASE}/v1/gallery/${id}.png`, { headers: authHeaders() })
        .then((r) => (r.ok ? r.blob() : null))
        .then((b) => (b ? URL.createObjectURL(b) : null))
        .catch(() => null));
    }
    return thumbs.get(id);
  }

  function figure(id, caption, cls) {
    const fig = document.createElement("figure");
    if (cls) fig.className = cls;
    const img = document.createElement("img");
    img.alt = `image ${id}`;
    img.title = `image ${id}: ${caption}`;
    thumb(id).then((url) => { if (url) img.src = url; });
    const cap = document.createElement("figcaption");
    cap.textContent = caption;
    fig.append(img, cap);
    return fig;
  }

  function percentile(sorted, q) {
    if (!sorted.length) return NaN;
    return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  }

  function keep(list, value) {
    list.push(value);
    if (list.length > KEEP) list.splice(0, list.length - KEEP);
  }

  function fit(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const w = Math.round(canvas.clientWidth * ratio), h = Math.round(canvas.clientHeight * ratio);
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    return [ctx, canvas.clientWidth, canvas.clientHeight];
  }

  // --- one replay ----------------------------------------------------------------------
  class Replay {
    constructor(info) {
      this.info = info;
      this.sfreq = info.sfreq;
      this.C = info.n_channels;
      this.chunk = info.chunk_samples;
      this.B = info.block_samples;
      this.blocks = new Map(); // block index -> Float32Array (C x len, channel-major)
      this.loading = new Set();
      this.sent = 0; // samples sent
      this.t0 = null; // wall clock of sample 0 (moved when the replay has to wait)
      this.sends = []; // {end, t}: when the chunk ending at sample `end` left
      this.decodes = 0;
      this.decodeTimes = [];
      this.latency = []; // server-side per-decode latency (ms)
      this.e2e = []; // chunk sent -> decode received (ms)
      this.hits = 0;
      this.scored = 0;
      this.skipped = 0;
      this.events = info.events.filter((e) => e.image_id >= 0).sort((a, b) => a.sample - b.sample);
      this.nextEvent = 0;
      this.W = Math.round(TRACE_S * this.sfreq);
      this.traces = info.display.map((d) => ({ ...d, buf: new Float32Array(this.W) }));
      this.latest = null;
      this.done = false;
    }

    open() {
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      const protocols = ["megdecode"];
      if (token) protocols.push(`bearer.${b64url(token)}`);
      this.ws = new WebSocket(`${scheme}://${location.host}${BASE}/v1/stream`, protocols);
      this.ws.binaryType = "arraybuffer";
      this.ws.onopen = () => this.ws.send(JSON.stringify({
        subject: this.info.subject, sfreq: this.sfreq, top_k: TOP_K, channels: this.info.channels }));
      this.ws.onmessage = (ev) => this.onMessage(JSON.parse(ev.data));
      this.ws.onclose = (ev) => {
        if (!this.done) this.fail(`the stream closed (code ${ev.code})`);
        this.stop();
      };
      this.fetchBlock(0);
      this.fetchBlock(1);
    }

    stop() {
      this.done = true;
      clearInterval(this.timer);
      if (this.ws && this.ws.readyState <= 1) this.ws.close(1000);
    }

    fail(text) {
      if (this.done) return;
      this.done = true;
      status(text, true);
      this.stop();
    }

    fetchBlock(i) {
      const start = i * this.B;
      if (start >= this.info.n_samples || this.blocks.has(i) || this.loading.has(i)) return;
      const stop = Math.min(start + this.B, this.info.n_samples);
      const q = new URLSearchParams({ subject: this.info.subject, run: this.info.run, start, stop });
      this.loading.add(i);
      api(`/v1/live/recording/data?${q}`, "bytes")
        .then((buf) => { if (!this.done) this.blocks.set(i, new Float32Array(buf)); })
        .catch((e) => this.fail(`recording: ${e.message}`))
        .finally(() => this.loading.delete(i));
    }

    onMessage(m) {
      if (m.type === "ready") {
        this.ready = m;
        this.timer = setInterval(() => this.pump(), 10);
        status(`streaming: ${m.n_channels} channels at ${m.sfreq} Hz, a decode every `
          + `${(m.stride_s * 1000).toFixed(1)} ms of signal`
          + (m.filter_matches_training ? "" : "; note: this model was trained on zero-phase filtered "
            + "data, the stream filters causally, so its inputs differ from training"));
      } else if (m.type === "decode") {
        this.onDecode(m);
      } else if (m.type === "behind") {
        this.skipped += m.skipped;
      } else if (m.type === "error") {
        this.fail(`${m.error}: ${m.detail}`);
      } else if (m.type === "end") {
        this.done = true;
        status(`replay finished: ${this.decodes} decodes of ${(this.sent / this.sfreq).toFixed(1)} s`);
      }
    }

    // Send what the wall clock says is due. When a block has not arrived yet or the
    // socket is backed up, the clock is held instead of bursting later.
    pump() {
      const now = performance.now();
      if (this.t0 === null) this.t0 = now;
      const due = Math.min(this.info.n_samples, Math.floor(((now - this.t0) / 1000) * this.sfreq));
      while (this.sent < due && this.ws.readyState === 1) {
        const bi = Math.floor(this.sent / this.B);
        const block = this.blocks.get(bi);
        if (!block || this.ws.bufferedAmount > MAX_BUFFERED) {
          this.fetchBlock(bi);
          this.t0 = now - (this.sent / this.sfreq) * 1000;
          break;
        }
        const len = block.length / this.C, off = this.sent - bi * this.B;
        const m = Math.min(this.chunk, len - off);
        const out = new Float32Array(this.C * m);
        for (let c = 0; c < this.C; c++) out.set(block.subarray(c * len + off, c * len + off + m), c * m);
        this.ws.send(out.buffer);
        for (const tr of this.traces) {
          for (let j = 0; j < m; j++) tr.buf[(this.sent + j) % this.W] = block[tr.index * len + off + j];
        }
        this.sent += m;
        this.sends.push({ end: this.sent, t: now });
        if (off + m >= len) this.blocks.delete(bi);
        this.fetchBlock(bi + 1);
        this.fetchBlock(bi + 2);
      }
      if (this.sent >= this.info.n_samples && !this.endSent && this.ws.readyState === 1) {
        this.endSent = true;
        this.ws.send(JSON.stringify({ type: "end" }));
      }
    }

    onDecode(m) {
      const now = performance.now();
      this.decodes += 1;
      this.decodeTimes.push(now);
      keep(this.latency, m.latency_ms);
      // The window of onset o is complete once the signal reaches o + tmax + delay.
      const need = m.onset_sample + Math.ceil((this.ready.window[1] + this.ready.delay_s) * this.sfreq) + 1;
      while (this.sends.length > 1 && this.sends[0].end < need) this.sends.shift();
      if (this.sends.length && this.sends[0].end >= need) keep(this.e2e, now - this.sends[0].t);
      this.latest = m;
      const event = this.matchEvent(m.onset_sample);
      if (event && event.in_gallery) {
        const ids = m.top_k.slice(0, TOP_K).map((h) => h.image_id);
        const hit = ids.includes(event.image_id);
        this.scored += 1;
        this.hits += hit ? 1 : 0;
        addTrial(event, m, hit, this.sfreq);
      }
    }

    // The trial whose onset is this decode's (within half a stride), if any.
    matchEvent(onset) {
      const half = this.ready.stride_samples / 2;
      while (this.nextEvent < this.events.length && this.events[this.nextEvent].sample < onset - half) {
        this.nextEvent += 1;
      }
      const e = this.events[this.nextEvent];
      if (e && Math.abs(e.sample - onset) <= half) { this.nextEvent += 1; return e; }
      return null;
    }
  }

  // --- drawing -------------------------------------------------------------------------
  function addTrial(event, m, hit, sfreq) {
    const li = document.createElement("li");
    li.className = hit ? "hit" : "miss";
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = `${(event.sample / sfreq).toFixed(1)} s ${hit ? "hit" : "miss"}`;
    const arrow = document.createElement("span");
    arrow.className = "arrow";
    arrow.textContent = "→";
    li.append(when, figure(event.image_id, event.category, "seen"), arrow);
    for (const h of m.top_k.slice(0, TOP_K)) {
      const cls = h.image_id === event.image_id ? "hit" : h.category && h.category === event.category ? "same" : "";
      li.append(figure(h.image_id, h.category || String(h.image_id), cls));
    }
    const list = $("trials");
    list.prepend(li);
    while (list.children.length > TRIAL_CARDS) list.lastChild.remove();
  }

  let shownLatest = null;
  function drawLatest(r) {
    const m = r.latest;
    if (!m || m === shownLatest) return;
    shownLatest = m;
    const box = $("top5");
    box.replaceChildren(...m.top_k.slice(0, TOP_K).map((h) => figure(
      h.image_id, `${h.category || h.image_id} ${h.score.toFixed(2)}`)));
    $("latest-t").textContent = `window at ${m.t_s.toFixed(2)} s, ${m.batch} in its batch`;
  }

  function drawTraces(r) {
    const [ctx, w, h] = fit($("traces"));
    ctx.clearRect(0, 0, w, h);
    const n = Math.min(r.sent, r.W), first = r.sent - n, lanes = r.traces.length || 1;
    const laneH = (h - 16) / lanes, left = 70;
    const x = (s) => left + ((s - (r.sent - r.W)) / r.W) * (w - left);
    ctx.font = "11px system-ui, sans-serif";
    for (const e of r.events) { // image onsets in view
      if (e.sample < r.sent - r.W || e.sample > r.sent) continue;
      ctx.strokeStyle = e.in_gallery ? "#e0a84a" : "#3a414c";
      ctx.beginPath(); ctx.moveTo(x(e.sample), 0); ctx.lineTo(x(e.sample), h - 16); ctx.stroke();
      if (e.in_gallery) { ctx.fillStyle = "#e0a84a"; ctx.fillText(e.category, x(e.sample) + 3, 11); }
    }
    const step = Math.max(1, Math.floor(n / (w - left)));
    r.traces.forEach((tr, k) => {
      let mean = 0, sq = 0;
      for (let s = first; s < r.sent; s++) mean += tr.buf[s % r.W];
      mean /= n || 1;
      for (let s = first; s < r.sent; s++) sq += (tr.buf[s % r.W] - mean) ** 2;
      const sd = Math.sqrt(sq / (n || 1)) || 1, mid = laneH * (k + 0.5), gain = laneH / (6 * sd);
      ctx.fillStyle = "#8a94a3";
      ctx.fillText(tr.name.split("-")[0], 4, mid + 4); // CTF names end in the system serial
      ctx.strokeStyle = "#7fb3e6";
      ctx.beginPath();
      for (let s = first; s < r.sent; s += step) {
        const y = mid - (tr.buf[s % r.W] - mean) * gain;
        if (s === first) ctx.moveTo(x(s), y); else ctx.lineTo(x(s), y);
      }
      ctx.stroke();
    });
    ctx.fillStyle = "#8a94a3";
    for (let t = Math.ceil((r.sent - r.W) / r.sfreq); t <= r.sent / r.sfreq; t++) {
      if (t >= 0) ctx.fillText(`${t} s`, x(t * r.sfreq) - 8, h - 3);
    }
  }

  function drawLatency(r) {
    const canvas = $("latency");
    const [ctx, w, h] = fit(canvas);
    ctx.clearRect(0, 0, w, h);
    const values = r.latency;
    canvas.dataset.entries = String(values.length);
    if (!values.length) return;
    const sorted = [...values].sort((a, b) => a - b);
    const p50 = percentile(sorted, 0.5), p99 = percentile(sorted, 0.99);
    const hi = Math.max(1, p99 * 1.3), bins = new Array(30).fill(0);
    for (const v of values) bins[Math.min(bins.length - 1, Math.floor((v / hi) * bins.length))] += 1;
    const top = Math.max(...bins), bw = (w - 10) / bins.length, base = h - 16;
    ctx.fillStyle = "#7fb3e6";
    bins.forEach((c, i) => { const bh = (c / top) * (base - 14); ctx.fillRect(5 + i * bw, base - bh, bw - 1, bh); });
    ctx.fillStyle = "#e0a84a";
    ctx.fillRect(5 + (p50 / hi) * (w - 10), 10, 1.5, base - 10);
    ctx.fillStyle = "#8a94a3";
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillText("0", 5, h - 3);
    ctx.fillText(`${(hi / 2).toFixed(1)}`, w / 2 - 10, h - 3);
    ctx.fillText(`${hi.toFixed(1)} ms`, w - 50, h - 3);
    ctx.fillText(`${values.length} decodes, p50 ${p50.toFixed(2)} ms`, 8, 10);
  }

  function drawStats(r) {
    const now = performance.now();
    while (r.decodeTimes.length && r.decodeTimes[0] < now - 2000) r.decodeTimes.shift();
    $("decodes").textContent = String(r.decodes);
    $("rate").textContent = r.decodes ? (r.decodeTimes.length / 2).toFixed(1) : "–";
    $("hits").textContent = `${r.hits}/${r.scored}`;
    $("hitrate").textContent = r.scored ? `${((100 * r.hits) / r.scored).toFixed(0)}%` : "–";
    $("chance").textContent = r.info.gallery_size ? `${((100 * TOP_K) / r.info.gallery_size).toFixed(1)}%` : "–";
    const lat = [...r.latency].sort((a, b) => a - b), e2e = [...r.e2e].sort((a, b) => a - b);
    const fmt = (v) => (Number.isFinite(v) ? v.toFixed(1) : "–");
    $("lat-p50").textContent = fmt(percentile(lat, 0.5));
    $("lat-p99").textContent = fmt(percentile(lat, 0.99));
    $("e2e-p50").textContent = fmt(percentile(e2e, 0.5));
    $("clock").textContent = `${(r.sent / r.sfreq).toFixed(1)}`;
    $("behind").textContent = r.skipped ? `(${r.skipped} skipped)` : "";
  }

  let lastSlow = 0;
  function frame(t) {
    if (current) {
      drawTraces(current);
      if (t - lastSlow > 250) { // the rest four times a second: enough for the eye
        lastSlow = t;
        drawLatest(current);
        drawStats(current);
        drawLatency(current);
      }
    }
    requestAnimationFrame(frame);
  }

  // --- controls ------------------------------------------------------------------------
  function fill(select, values, chosen) {
    select.replaceChildren(...values.map((v) => new Option(v, v, false, v === chosen)));
  }

  function describe(info) {
    const shown = info.events.filter((e) => e.in_gallery).length;
    const el = $("source");
    el.replaceChildren();
    const b = document.createElement("b");
    if (info.source === "recording") {
      b.textContent = "Recording: ";
      el.append(b, `${info.note} (subject ${info.subject}), ${info.duration_s.toFixed(1)} s at ${info.sfreq} Hz, `
        + `${info.n_channels} channels, ${info.events.length} trials of which ${shown} show gallery images. `
        + "Hit: the top-5 of the decode at an image's onset contains that image.");
    } else {
      b.textContent = "No recording: ";
      el.append(b, info.note);
    }
  }

  async function start(subject, run) {
    if (current) current.stop();
    current = null;
    token = $("token").value.trim();
    $("trials").replaceChildren();
    $("top5").replaceChildren();
    status("loading the recording…");
    try {
      const q = new URLSearchParams();
      if (subject) q.set("subject", subject);
      if (run) q.set("run", run);
      const [info, card] = await Promise.all([api(`/v1/live/recording?${q}`, "json"), api("/v1/model", "json")]);
      $("model").textContent = `model: ${card.name}${card.version ? ` v${card.version}` : ""}`
        + `${card.alias ? ` (@${card.alias})` : ""}, ${card.latent_name}, gallery ${card.gallery_size} images, `
        + `window ${+card.window.tmin.toFixed(3)}–${+card.window.tmax.toFixed(3)} s`;
      fill($("subject"), info.subjects, info.subject);
      fill($("run"), info.runs, info.run);
      describe(info);
      current = new Replay(info);
      current.open();
      status("connecting to the stream…");
    } catch (e) {
      status(e.message, true);
    }
  }

  $("controls").addEventListener("submit", (ev) => { ev.preventDefault(); start($("subject").value, $("run").value); });
  $("subject").addEventListener("change", () => start($("subject").value, ""));
  $("stop").addEventListener("click", () => { if (current) { current.stop(); status("stopped"); } });
  const initial = readUrl();
  requestAnimationFrame(frame);
  start(initial.subject, initial.run);
})();
