'use strict';
// mala dashboard front end. Every string from the server is untrusted: it only
// ever reaches the DOM as a text node or a plain (non-URL, non-event) attribute.
(() => {
  const TOKEN = new URLSearchParams(location.search).get('token');
  const ACTIVE = new Set(['claimed', 'turn', 'gate', 'review', 'merging']);
  const SVGNS = 'http://www.w3.org/2000/svg';
  const THROTTLE_MS = 500;
  const $ = (id) => document.getElementById(id);

  const state = {
    run: null,
    fetchedAt: 0,   // client clock when `run` arrived
    skew: 0,        // server clock minus client clock, so durations match the server
    detailId: null,
    detailIssue: null,
    tr: newTranscript(null),
    es: null,
    retryMs: 1000,
  };

  // Last inputs of each section, so an unchanged section keeps its elements (and the
  // user's hover, focus and text selection) across refreshes.
  const memo = new Map();
  let rowCache = new Map();
  function unchanged(name, ...inputs) {
    const key = JSON.stringify(inputs);
    if (memo.get(name) === key) return true;
    memo.set(name, key);
    return false;
  }

  function newTranscript(id) {
    return { id, offset: 0, done: false, loading: false, count: 0 };
  }

  // ---------- DOM helpers ----------
  function build(node, attrs, kids) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      // Handlers are attached as listeners, never as attributes (CSP forbids those anyway).
      if (k.startsWith('on')) {
        if (typeof v === 'function') node.addEventListener(k.slice(2), v);
        continue;
      }
      node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid == null || kid === false) continue;
      node.appendChild(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return node;
  }
  const el = (tag, attrs, ...kids) => build(document.createElement(tag), attrs, kids);
  const svg = (tag, attrs, ...kids) => build(document.createElementNS(SVGNS, tag), attrs, kids);
  // Like replaceChildren, but skips null/false (replaceChildren would print "null").
  const fill = (node, ...kids) => { node.replaceChildren(); return build(node, null, kids); };
  // Server values end up in class names; keep them to a harmless alphabet.
  const cls = (s) => String(s == null ? '' : s).toLowerCase().replace(/[^a-z0-9_-]/g, '');

  // ---------- formatting ----------
  const ms = (iso) => (iso ? Date.parse(iso) : NaN);
  const pad2 = (n) => String(n).padStart(2, '0');
  function fmtDur(sec) {
    if (!Number.isFinite(sec)) return '—';
    sec = Math.max(0, Math.round(sec));
    const h = Math.floor(sec / 3600), m = Math.floor((sec % 3600) / 60), s = sec % 60;
    if (h) return `${h}h ${pad2(m)}m`;
    if (m) return `${m}m ${pad2(s)}s`;
    return `${s}s`;
  }
  function fmtTick(sec) {
    const h = Math.floor(sec / 3600), m = Math.floor((sec % 3600) / 60), s = sec % 60;
    if (h) return m ? `${h}h${pad2(m)}` : `${h}h`;
    if (m) return s ? `${m}m${pad2(s)}` : `${m}m`;
    return `${s}s`;
  }
  const fmtCost = (c) => (c == null ? '—' : '$' + Number(c).toFixed(2));
  const fmtInt = (n) => (n == null ? '—' : Number(n).toLocaleString('en-US'));
  function fmtClock(iso) {
    const d = new Date(iso);
    return isNaN(d) ? '' : d.toLocaleTimeString([], { hour12: false });
  }
  const short = (agent) => String(agent || '').split('@')[0];
  const running = () => !!state.run && state.run.outcome === 'running';

  // The server's clock is the reference; a finished run's clock stops at its end.
  function nowMs() {
    const r = state.run;
    if (!r) return Date.now();
    if (r.outcome !== 'running') return ms(r.finished_at) || ms(r.now) || Date.now();
    return Date.now() + state.skew;
  }

  // ---------- network ----------
  const headers = (extra) => (TOKEN == null ? { ...extra } : { ...extra, 'X-Mala-Token': TOKEN });

  async function api(path) {
    const res = await fetch(path, { headers: headers(), cache: 'no-store' });
    const body = await res.json().catch(() => null);
    if (!res.ok) {
      let msg = `${path.split('?')[0]}: HTTP ${res.status}`;
      if (res.status === 401) msg += ' — the token in the page URL is missing or wrong';
      if (body && body.message) msg += ` — ${body.message}`;
      const err = new Error(msg);
      err.status = res.status;
      throw err;
    }
    return body;
  }

  // Coalesces bursts of SSE messages into at most one call per `wait` ms; a call
  // that arrives while one is pending or in flight always yields one more run
  // afterwards, so the newest state is never missed.
  function throttled(fn, wait) {
    let last = -Infinity, timer = null, busy = false, again = false;
    async function fire() {
      timer = null;
      if (busy) { again = true; return; }
      busy = true;
      last = Date.now();
      try { await fn(); } finally {
        busy = false;
        if (again) { again = false; kick(); }
      }
    }
    function kick() {
      if (timer) return;
      timer = setTimeout(fire, Math.max(0, last + wait - Date.now()));
    }
    return kick;
  }

  const refresh = throttled(() => Promise.all([loadRun(), state.detailId ? loadDetail() : null]), THROTTLE_MS);

  // Shows text in a banner element, hiding the element when there is none.
  function banner(node, text) { node.textContent = text; node.hidden = !text; }
  const showError = (text) => banner($('error'), text);

  let toastTimer = null;
  function toast(text, bad) {
    const m = $('message');
    m.textContent = text;
    m.className = bad ? 'bad' : 'ok';
    m.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { m.hidden = true; }, 8000);
  }

  async function loadRun() {
    try {
      const run = await api('/api/run');
      state.run = run;
      state.fetchedAt = Date.now();
      state.skew = (ms(run.now) || state.fetchedAt) - state.fetchedAt;
      showError('');
      renderRun();
      syncStream();
    } catch (e) {
      showError(e.status ? e.message : `/api/run: ${e.message || e} (is mala still running?)`);
    }
  }

  // ---------- live stream ----------
  function setConn(s) {
    $('conn').textContent = s;
    $('conn').className = 'conn conn-' + s;
  }

  function closeStream() {
    if (state.es) state.es.close();
    state.es = null;
    setConn('finished');
  }

  // A finished (or non-live) run has nothing more to say: stop reconnecting.
  function syncStream() {
    const r = state.run;
    if (r.outcome !== 'running' || r.live === false) {
      closeStream();
    } else if (!state.es) {
      openStream();
    }
  }

  function openStream() {
    const es = new EventSource('/api/events?token=' + encodeURIComponent(TOKEN || ''));
    state.es = es;
    es.onopen = () => { state.retryMs = 1000; setConn('live'); refresh(); };
    es.onmessage = () => refresh();
    es.onerror = () => {
      if (state.es !== es) return;
      if (!running()) { closeStream(); return; }
      setConn('reconnecting');
      refresh(); // may discover the run ended, which closes the stream
      // The browser gives up for good on HTTP errors; retry ourselves with backoff.
      if (es.readyState === EventSource.CLOSED) {
        state.es = null;
        setTimeout(() => { if (!state.es && running()) openStream(); }, state.retryMs);
        state.retryMs = Math.min(state.retryMs * 2, 30000);
      }
    };
  }

  // ---------- controls ----------
  async function control(path, what) {
    const r = state.run;
    if (!r || !r.controls) return;
    try {
      const res = await fetch(path, {
        method: 'POST', cache: 'no-store', headers: headers({ 'X-Mala-Csrf': r.csrf || '' }),
      });
      const body = await res.json().catch(() => null);
      const ok = res.ok && !!body && body.ok === true;
      toast((body && body.message) || `${what}: HTTP ${res.status}`, !ok);
    } catch (e) {
      toast(`${what} failed: ${e.message || e}`, true);
    }
    refresh();
  }

  function stopIssue(id) {
    if (!confirm(`Stop the agent working on ${id}?`)) return;
    // The answer comes once its worker has ended (its session's grace).
    toast(`stopping ${id}…`, false);
    control(`/api/issues/${encodeURIComponent(id)}/stop`, `stop ${id}`);
  }

  function stopButton(id) {
    return el('button', {
      type: 'button', class: 'stop', title: `stop ${id}`,
      onclick: (e) => { e.stopPropagation(); stopIssue(id); },
    }, 'stop');
  }

  // ---------- run rendering ----------
  function renderRun() {
    const r = state.run;
    if (!r) return;
    for (const render of [renderHeader, renderTotals, renderPaused, renderIssues, renderAgents, renderLocks, renderTimeline, renderWarnings]) render(r);
    if (state.detailIssue) renderDetail(state.detailIssue);
    tick();
  }

  function renderHeader(r) {
    $('run-id').textContent = r.run_id || '';
    $('repo').textContent = r.repo || '';
    const o = $('outcome');
    o.textContent = r.outcome || '';
    o.className = 'outcome outcome-' + cls(r.outcome);
    const d = $('drain');
    d.hidden = !r.controls;
    d.disabled = r.outcome !== 'running';
    document.title = `mala ${r.run_id || ''} · ${r.outcome || ''}`;
  }

  function renderTotals(r) {
    if (unchanged('totals', r.totals, r.max_agents)) return;
    const t = r.totals || {};
    const item = (label, key, value, ...extra) => el('div', { class: `total total-${key}` },
      el('span', { class: 'lbl' }, label), el('span', { class: 'num', 'data-total': key }, value), ...extra);
    $('totals').replaceChildren(
      item('closed', 'closed', fmtInt(t.closed)),
      item('failed', 'failed', fmtInt(t.failed)),
      item('in flight', 'in_flight', fmtInt(t.in_flight)),
      item('queued', 'queued', fmtInt(t.queued)),
      el('div', { class: 'total total-skipped' }, el('span', { class: 'lbl' }, 'skipped / released'),
        el('span', { class: 'num' }, el('span', { 'data-total': 'skipped' }, fmtInt(t.skipped)), ' / ',
          el('span', { 'data-total': 'released' }, fmtInt(t.released)))),
      item('issues\' tokens', 'tokens', fmtInt(t.tokens)),
      item('issues\' cost', 'cost', fmtCost(t.cost_usd)),
      // The run's own figure counts reviewers and fixers too: the budget's.
      item('run spent', 'run_cost', t.run_cost_usd != null ? fmtCost(t.run_cost_usd) : '—',
        t.budget != null ? el('span', { class: 'budget', 'data-total': 'budget' }, `budget ${t.budget}`) : null),
      item('max agents', 'max_agents', fmtInt(r.max_agents)),
    );
  }

  function renderPaused(r) {
    const p = $('paused');
    if (!r.paused) { p.hidden = true; p.replaceChildren(); return; }
    const until = r.paused.until;
    fill(p, el('strong', null, 'paused'), ': ', r.paused.reason || '',
      until ? ` — until ${fmtClock(until)} (in ${fmtDur((ms(until) - nowMs()) / 1000)})` : '');
    p.hidden = false;
  }

  const pill = (s) => el('span', { class: 'pill st-' + cls(s) }, s || '?');

  function verdictSummary(v) {
    if (!v) return null;
    const first = (v.reasons || [])[0];
    return [
      el('span', { class: v.passed ? 'ok' : 'bad' }, `${v.kind} ${v.passed ? '✓ passed' : '✗ failed'}`),
      first ? el('div', { class: 'vreason', title: first }, first) : null,
    ];
  }

  function issueRow(r, is) {
    const active = ACTIVE.has(is.state);
    const open = is.started_at && !is.ended_at;
    const dur = is.started_at ? fmtDur(((is.ended_at ? ms(is.ended_at) : nowMs()) - ms(is.started_at)) / 1000) : '—';
    return el('tr', {
      class: 'issue' + (is.id === state.detailId ? ' selected' : ''),
      'data-id': is.id, 'data-state': is.state, tabindex: 0,
      onclick: () => openDetail(is.id),
      onkeydown: (e) => { if (e.key === 'Enter' && e.target === e.currentTarget) openDetail(is.id); },
    },
      el('td', { class: 'id mono' }, is.id),
      el('td', { class: 'title-cell' }, el('div', { class: 'title' }, is.title || ''), el('div', { class: 'reason' }, is.reason || '')),
      el('td', { class: 'state' }, pill(is.state)),
      el('td', { class: 'num' }, fmtInt(is.attempts)),
      el('td', { class: 'verdict' }, verdictSummary(is.verdict)),
      el('td', { class: 'num' }, fmtInt(is.tokens)),
      el('td', { class: 'num' }, fmtCost(is.cost_usd)),
      el('td', { class: 'num dur', 'data-start': open ? is.started_at : null }, dur),
      el('td', { class: 'actions' }, active && r.controls ? stopButton(is.id) : null));
  }

  function renderIssues(r) {
    const issues = r.issues || [];
    const body = $('issues').tBodies[0];
    const next = new Map();
    const rows = issues.map((is) => {
      const key = JSON.stringify([is, is.id === state.detailId, !!r.controls]);
      const old = rowCache.get(is.id);
      const row = old && old.key === key ? old.row : issueRow(r, is);
      next.set(is.id, { key, row });
      return row;
    });
    rowCache = next;
    if (!rows.length) body.replaceChildren(el('tr', { class: 'empty' }, el('td', { colspan: 9, class: 'muted' }, 'no issues yet')));
    else if (rows.length !== body.children.length || rows.some((row, i) => body.children[i] !== row)) body.replaceChildren(...rows);
    $('issues-count').textContent = issues.length ? `(${issues.length})` : '';
  }

  function renderAgents(r) {
    if (unchanged('agents', r.agents)) return;
    const list = r.agents || [];
    $('agents').replaceChildren(...(list.length ? list.map((a) => el('div', {
      class: 'agent', title: a.agent, onclick: () => { if (a.issue) openDetail(a.issue); },
    },
      el('div', { class: 'agent-head' },
        el('span', { class: 'agent-issue mono' }, a.issue || short(a.agent)),
        el('span', { class: 'agent-name mono muted' }, a.agent),
        el('span', { class: 'idle' + (a.idle_seconds > 120 ? ' stale' : '') }, `idle ${a.idle_seconds == null ? '?' : a.idle_seconds} s`)),
      a.doing ? el('div', { class: 'doing mono' }, a.doing) : el('div', { class: 'doing thinking' }, 'thinking')))
      : [el('p', { class: 'muted' }, 'no live agents')]));
  }

  // ---------- locks graph ----------
  function renderLocks(r) {
    const locks = r.locks || [], waits = r.waits || [], dls = r.deadlocks || [];
    const box = $('locks');
    const owners = (r.issues || []).map((i) => [i.id, i.agent]);
    if (unchanged('locks', locks, waits, dls, owners, box.clientWidth)) return;
    const parts = [];
    if (!locks.length && !waits.length) parts.push(el('p', { class: 'muted' }, 'no locks held'));
    else parts.push(lockGraph(r, locks, waits, box.clientWidth || 420));
    if (dls.length) {
      parts.push(el('ul', { class: 'deadlocks' }, dls.map((d) => el('li', null,
        `deadlock broken: ${d.victim} gave way to ${d.holder} at ${fmtClock(d.at)}`,
        d.cycle && d.cycle.length ? el('span', { class: 'muted' }, ` (cycle ${d.cycle.map(short).join(' → ')})`) : null))));
    }
    box.replaceChildren(...parts);
  }

  function agentIssue(r, agent) {
    const is = (r.issues || []).find((i) => i.agent === agent);
    return is ? is.id : short(agent);
  }

  function lockGraph(r, locks, waits, width) {
    const agents = [], files = [];
    const add = (arr, v) => { if (v != null && !arr.includes(v)) arr.push(v); };
    locks.forEach((l) => { add(agents, l.holder); add(files, l.path); });
    waits.forEach((w) => { add(agents, w.agent); (w.on || []).forEach((o) => { add(agents, o.holder); add(files, o.path); }); });
    const waiting = new Set(waits.map((w) => w.agent));
    const W = Math.max(320, width), ROW = 30, n = Math.max(agents.length, files.length), H = n * ROW + 8;
    // The shorter column is centred so edges fan out evenly.
    const yOf = (i, len) => 4 + ((n - len) * ROW) / 2 + i * ROW + ROW / 2;
    const ax = 104, R = 8, fileW = Math.min(260, Math.round(W * 0.5)), fx = W - fileW - 2;
    const aY = new Map(agents.map((a, i) => [a, yOf(i, agents.length)]));
    const fY = new Map(files.map((f, i) => [f, yOf(i, files.length)]));
    const edge = (a, f, kind) => {
      const x1 = ax + R, y1 = aY.get(a), x2 = fx - 2, y2 = fY.get(f), mx = (x1 + x2) / 2;
      return svg('path', { class: 'edge ' + kind, d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, 'marker-end': `url(#arr-${kind})` });
    };
    const marker = (kind) => svg('marker', { id: 'arr-' + kind, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
      svg('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrow ' + kind }));
    const maxChars = Math.floor((fileW - 12) / 6.4);
    const clip = (p) => (p.length > maxChars ? '…' + p.slice(p.length - maxChars + 1) : p);
    return svg('svg', { class: 'locks-svg', viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img' },
      svg('defs', null, marker('held'), marker('wait')),
      locks.map((l) => edge(l.holder, l.path, 'held')),
      waits.flatMap((w) => (w.on || []).map((o) => edge(w.agent, o.path, 'wait'))),
      agents.map((a) => {
        const id = agentIssue(r, a);
        return svg('g', { class: 'anode' + (waiting.has(a) ? ' waiting' : ''), 'data-agent': a, onclick: () => openDetail(id) },
          svg('title', null, a),
          svg('circle', { cx: ax, cy: aY.get(a), r: R }),
          svg('text', { x: ax - R - 5, y: aY.get(a) + 4, 'text-anchor': 'end' }, id.length > 14 ? id.slice(0, 13) + '…' : id));
      }),
      files.map((f) => svg('g', { class: 'fnode', 'data-path': f },
        svg('title', null, f),
        svg('rect', { x: fx, y: fY.get(f) - 10, width: fileW, height: 20, rx: 3 }),
        svg('text', { x: fx + 6, y: fY.get(f) + 4 }, clip(f)))));
  }

  // ---------- timeline ----------
  function niceStep(raw) {
    const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
    return steps.find((s) => s >= raw) || steps[steps.length - 1];
  }

  function barClass(s) {
    if (s === 'closed' || s === 'failed') return s;
    if (s === 'skipped' || s === 'released') return 'skipped';
    return 'running';
  }

  function renderTimeline(r) {
    const box = $('timeline');
    const issues = (r.issues || []).filter((i) => i.lane != null && i.started_at);
    if (!issues.length) { box.replaceChildren(el('p', { class: 'muted' }, 'nothing started yet')); return; }
    const now = nowMs();
    const t0 = ms(r.started_at) || Math.min(...issues.map((i) => ms(i.started_at)));
    const t1 = Math.max(now, t0 + 10000, ...issues.map((i) => ms(i.ended_at) || now));
    const lanes = Math.max(...issues.map((i) => i.lane)) + 1;
    const W = Math.max(400, box.clientWidth || 760), GUT = 40, RIGHT = 14, ROW = 22, AXIS = 18;
    const H = lanes * ROW + AXIS + 4, span = (t1 - t0) / 1000;
    const x = (t) => GUT + ((t - t0) / 1000 / span) * (W - GUT - RIGHT);
    const step = niceStep(span / Math.max(3, Math.floor((W - GUT) / 90)));
    const kids = [svg('defs', null, svg('pattern', { id: 'tl-stripes', width: 8, height: 8, patternUnits: 'userSpaceOnUse', patternTransform: 'rotate(45)' },
      svg('rect', { width: 8, height: 8, class: 'stripe-a' }), svg('rect', { width: 4, height: 8, class: 'stripe-b' })))];
    for (let l = 0; l < lanes; l++) {
      kids.push(svg('rect', { class: 'lane' + (l % 2 ? ' odd' : ''), x: GUT, y: l * ROW, width: W - GUT - RIGHT + 4, height: ROW }));
      kids.push(svg('text', { class: 'lane-label', x: GUT - 6, y: l * ROW + ROW / 2 + 4, 'text-anchor': 'end' }, `#${l}`));
    }
    for (let s = 0; s <= span + 0.001; s += step) {
      const tx = x(t0 + s * 1000);
      kids.push(svg('line', { class: 'tick', x1: tx, x2: tx, y1: 0, y2: lanes * ROW + 3 }));
      kids.push(svg('text', { class: 'tick-label', x: tx, y: lanes * ROW + AXIS - 3, 'text-anchor': 'middle' }, fmtTick(s)));
    }
    for (const is of issues) kids.push(timelineBar(is, x, ROW, now));
    box.replaceChildren(svg('svg', { class: 'timeline-svg', viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img' }, kids));
  }

  function timelineBar(is, x, ROW, now) {
    const start = ms(is.started_at), end = ms(is.ended_at) || now;
    const bx = x(start), bw = Math.max(2, x(end) - bx), by = is.lane * ROW + 3, bh = ROW - 6;
    const k = barClass(is.state);
    const fits = bw > is.id.length * 6.6 + 8;
    return svg('g', { class: 'bar-g', onclick: () => openDetail(is.id) },
      svg('rect', { class: `bar bar-${k}` + (is.id === state.detailId ? ' selected' : ''), 'data-id': is.id, 'data-state': is.state, x: bx, y: by, width: bw, height: bh, rx: 2 },
        svg('title', null, `${is.id} ${is.title || ''} — ${is.state}, ${fmtDur((end - start) / 1000)}`)),
      svg('text', { class: 'bar-label' + (fits ? ' inside' : ''), x: fits ? bx + 4 : bx + bw + 3, y: by + bh / 2 + 4 }, is.id));
  }

  function renderWarnings(r) {
    if (unchanged('warnings', r.warnings)) return;
    const w = r.warnings || [];
    $('warnings-panel').hidden = !w.length;
    $('warnings').replaceChildren(...w.map((t) => el('li', null, t)));
  }

  // ---------- detail panel ----------
  function openDetail(id) {
    if (state.detailId !== id) {
      state.detailId = id;
      state.detailIssue = null;
      $('detail-id').textContent = id;
      $('detail-title').textContent = '';
      $('detail-body').replaceChildren(el('p', { class: 'muted' }, 'loading…'));
      $('detail').scrollTop = 0;
      resetTranscript(id);
    }
    $('detail').hidden = false;
    $('layout').classList.add('with-detail');
    renderRun(); // the main column just got narrower and the selection moved
    loadDetail();
  }

  function closeDetail() {
    state.detailId = null;
    state.detailIssue = null;
    state.tr = newTranscript(null);
    $('detail').hidden = true;
    $('layout').classList.remove('with-detail');
    renderRun();
  }

  async function loadDetail() {
    const id = state.detailId;
    if (!id) return;
    try {
      const issue = await api(`/api/issues/${encodeURIComponent(id)}`);
      if (state.detailId !== id) return;
      state.detailIssue = issue;
      renderDetail(issue);
      // Caught up on a live issue: fetch only what was appended since.
      if (state.tr.done && ACTIVE.has(issue.state)) loadTranscript();
    } catch (e) {
      if (state.detailId !== id) return;
      $('detail-body').replaceChildren(el('p', { class: 'bad' }, e.status === 404 ? `unknown issue ${id}` : e.message));
    }
  }

  function renderDetail(is) {
    const pane = $('detail'), top = pane.scrollTop;
    const v = is.verdict;
    const fact = (k, val) => el('span', { class: 'fact' }, el('span', { class: 'muted' }, k + ' '), val);
    const dur = is.started_at ? fmtDur(((is.ended_at ? ms(is.ended_at) : nowMs()) - ms(is.started_at)) / 1000) : '—';
    $('detail-id').textContent = is.id;
    $('detail-title').textContent = is.title || '';
    fill($('detail-body'),
      el('div', { class: 'facts' }, pill(is.state), fact('attempts', fmtInt(is.attempts)), fact('tokens', fmtInt(is.tokens)),
        fact('cost', fmtCost(is.cost_usd)), fact('duration', dur), is.agent ? fact('agent', el('span', { class: 'mono' }, is.agent)) : null,
        ACTIVE.has(is.state) && state.run && state.run.controls ? stopButton(is.id) : null),
      is.reason ? el('div', { class: 'detail-reason' }, is.reason) : null,
      v ? el('div', { class: 'detail-verdict ' + (v.passed ? 'pass' : 'fail') },
        el('div', null, el('strong', null, `${v.kind} ${v.passed ? '✓ passed' : '✗ failed'}`)),
        el('ul', null, (v.reasons || []).map((x) => el('li', null, x)))) : null,
      el('h3', null, 'History'),
      historyList(is.history));
    pane.scrollTop = top;
    updateMore();
  }

  function historyList(h) {
    if (!h || !h.length) return el('p', { class: 'muted' }, 'no history');
    return el('ol', { class: 'history' }, h.map((x) => el('li', { class: 'h-' + cls(x.kind) },
      el('span', { class: 't' }, fmtClock(x.t)),
      el('span', { class: 'kind' }, x.kind),
      x.passed == null ? null : el('span', { class: x.passed ? 'ok' : 'bad' }, x.passed ? '✓' : '✗'),
      el('span', { class: 'text' }, x.text || ''))));
  }

  // ---------- transcript ----------
  function resetTranscript(id) {
    state.tr = newTranscript(id);
    $('transcript').replaceChildren();
    note('');
    loadTranscript();
  }

  const note = (text) => banner($('transcript-note'), text);

  function updateMore() {
    const tr = state.tr, b = $('more');
    b.hidden = !tr.id || tr.done;
    b.disabled = tr.loading;
    b.textContent = tr.loading ? 'loading…' : 'load more';
  }

  async function loadTranscript() {
    const tr = state.tr;
    if (!tr.id || tr.loading) return;
    tr.loading = true;
    updateMore();
    try {
      const page = await api(`/api/issues/${encodeURIComponent(tr.id)}/transcript?offset=${tr.offset}&limit=200`);
      if (state.tr !== tr) return;
      const entries = (page && page.entries) || [];
      $('transcript').append(...entries.map(entryNode));
      tr.count += entries.length;
      if (page && Number.isFinite(page.next_offset)) tr.offset = page.next_offset;
      tr.done = !page || page.done !== false;
      note(tr.count ? '' : 'transcript is empty');
    } catch (e) {
      if (state.tr !== tr) return;
      if (e.status === 404) { tr.done = true; if (!tr.count) note('no transcript yet'); }
      else note(e.message);
    } finally {
      tr.loading = false;
      if (state.tr === tr) updateMore();
    }
  }

  // label: shown badge; body: how the text is laid out.
  const KINDS = {
    prompt: ['prompt', 'fold'], text: ['', 'prose'], tool_call: ['tool', 'code'], tool_result: ['result', 'fold'],
    command: ['$', 'code'], denied: ['denied', 'code'], edit: ['edit', 'code'], unlocked_write: ['unlocked write', 'code'],
    damage: ['damage', 'prose'], turn_end: ['turn end', 'prose'], stderr: ['stderr', 'fold'], session: ['session', 'prose'],
  };
  const PREVIEW = 160;

  function fold(text) {
    if (text.length <= PREVIEW && !text.includes('\n')) return el('code', { class: 'code' }, text);
    const first = text.split('\n', 1)[0];
    const preview = first.length > PREVIEW ? first.slice(0, PREVIEW) + '…' : first + ' …';
    return el('details', null, el('summary', { class: 'code' }, preview, el('span', { class: 'muted' }, ` (${text.length} chars)`)),
      el('pre', { class: 'code' }, text));
  }

  function entryNode(e) {
    const kind = String(e.kind || 'unknown');
    const [label, layout] = KINDS[kind] || [kind, 'prose'];
    const text = e.text == null ? '' : String(e.text);
    const badge = (kind === 'tool_call' || kind === 'denied') && e.tool ? (kind === 'denied' ? `denied ${e.tool}` : e.tool) : label;
    const body = layout === 'fold' ? fold(text) : el(layout === 'code' ? 'code' : 'div', { class: layout }, text);
    let exit = null;
    if (kind === 'command') {
      exit = e.exit_code == null ? el('span', { class: 'exit' }, 'exit ?')
        : el('span', { class: 'exit ' + (e.exit_code === 0 ? 'ok' : 'bad') }, `exit ${e.exit_code}`);
    }
    return el('div', { class: `entry k-${cls(kind)}` + (e.is_error ? ' is-error' : ''), 'data-kind': kind },
      el('span', { class: 't', title: e.t || '' }, fmtClock(e.t)),
      el('div', { class: 'entry-body' }, badge ? el('span', { class: 'kind' }, badge) : null,
        e.is_error ? el('span', { class: 'kind err' }, 'error') : null, exit, body));
  }

  // ---------- clock & wiring ----------
  // Durations of unfinished work keep moving between server updates.
  function tick() {
    const r = state.run;
    if (!r) return;
    const t = r.totals || {};
    let secs = t.elapsed_seconds;
    if (secs == null) secs = (nowMs() - ms(r.started_at)) / 1000;
    else if (running()) secs += (Date.now() - state.fetchedAt) / 1000;
    $('elapsed').textContent = fmtDur(secs);
    const now = nowMs();
    for (const c of document.querySelectorAll('[data-start]')) c.textContent = fmtDur((now - ms(c.getAttribute('data-start'))) / 1000);
  }

  function init() {
    $('drain').addEventListener('click', () => control('/api/drain', 'drain'));
    $('detail-close').addEventListener('click', closeDetail);
    $('more').addEventListener('click', () => loadTranscript());
    document.addEventListener('keydown', (e) => { if (e.key === 'Escape' && state.detailId) closeDetail(); });
    let resizeTimer = null;
    window.addEventListener('resize', () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(renderRun, 150); });
    setInterval(tick, 1000);
    if (TOKEN == null) showError('no token in the page URL (open the link mala printed)');
    refresh();
  }

  init();
})();
