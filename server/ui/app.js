// Chronicle web UI: plain JavaScript, no framework, no build step. It
// reads only the public /v1 API (signed in by the session cookie; state
// changes carry the CSRF token from the chronicle_csrf cookie) and renders
// by path: / runs, /runs/ID[?at=SEQ] one run and time travel, /verify,
// /agents.
'use strict';

const STATUSES = ['pending', 'running', 'paused', 'succeeded', 'failed', 'canceled', 'quarantined'];
const EVENTS_PAGE = 100;

// ---------------------------------------------------------------- helpers

/** Build an element: h('a', {href: '/'}, 'text', child). Text is never HTML. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function cookie(name) {
  for (const part of document.cookie.split(';')) {
    const [k, v] = part.trim().split('=');
    if (k === name) return v;
  }
  return '';
}

/** Call the API; throws an Error with the problem's detail. */
async function api(path, opts = {}) {
  const headers = Object.assign({ Accept: 'application/json' }, opts.headers || {});
  const init = { method: opts.method || 'GET', headers, credentials: 'same-origin' };
  if (init.method !== 'GET') {
    headers['X-CSRF-Token'] = cookie('chronicle_csrf');
    if (opts.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(opts.body);
    }
  }
  const resp = await fetch(path, init);
  if (resp.status === 401) {
    location.assign('/login?next=' + encodeURIComponent(location.pathname + location.search));
    throw new Error('signed out');
  }
  const text = await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = text; }
  if (!resp.ok) {
    const detail = body && body.detail ? body.detail : (resp.status + ' ' + resp.statusText);
    const err = new Error(detail);
    err.status = resp.status;
    err.problem = body;
    throw err;
  }
  return body;
}

function flash(message, info) {
  const el = document.getElementById('flash');
  el.textContent = message;
  el.className = info ? 'info' : '';
  el.hidden = !message;
}

function fmtTime(t) {
  if (!t) return '';
  const d = new Date(t);
  if (isNaN(d)) return t;
  return d.toISOString().replace('T', ' ').replace('Z', '').slice(0, 23);
}

function fmtDur(ms) {
  if (ms === null || ms === undefined || isNaN(ms)) return '';
  if (ms < 1000) return Math.round(ms) + ' ms';
  const sec = ms / 1000;
  if (sec < 60) return sec.toFixed(sec < 10 ? 2 : 1) + ' s';
  const m = Math.floor(sec / 60);
  if (m < 60) return m + ' min ' + Math.round(sec % 60) + ' s';
  return Math.floor(m / 60) + ' h ' + (m % 60) + ' min';
}

function badge(status, label) {
  return h('span', { class: 'badge st-' + status, dataset: { status } }, label || status.replace('_', ' '));
}

function short(id) { return String(id).slice(0, 8); }

function json(v) { return JSON.stringify(v, null, 2); }

function debounce(fn, ms) {
  let t = null;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

/** Ask for confirmation in the page's dialog; resolves to the form's
 * fields (an object) or null when backed out. */
function confirmDialog(title, body, yesLabel, danger) {
  const dlg = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  const holder = document.getElementById('confirm-body');
  holder.replaceChildren(...[].concat(body));
  const yes = document.getElementById('confirm-yes');
  yes.textContent = yesLabel;
  yes.className = danger ? 'danger' : 'primary';
  return new Promise((resolve) => {
    dlg.addEventListener('close', () => {
      if (dlg.returnValue !== 'ok') return resolve(null);
      const fields = {};
      for (const el of holder.querySelectorAll('[name]')) fields[el.name] = el.value;
      resolve(fields);
    }, { once: true });
    dlg.returnValue = '';
    dlg.showModal();
    const first = holder.querySelector('input, textarea') || yes;
    first.focus();
  });
}

let teardown = [];
function onLeave(fn) { teardown.push(fn); }

function setNav(which) {
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === which) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

// ------------------------------------------------------------------ runs

async function runsPage(root) {
  setNav('runs');
  document.title = 'Runs · Chronicle';
  const params = new URLSearchParams(location.search);
  const filter = { status: params.get('status') || '', workflow: params.get('workflow') || '', q: params.get('q') || '' };
  let cursor = null;
  let rows = [];

  const statusSel = h('select', { id: 'f-status', 'aria-label': 'Status' },
    h('option', { value: '' }, 'any status'),
    STATUSES.map((st) => h('option', { value: st, selected: st === filter.status }, st)));
  const wfInput = h('input', { type: 'text', id: 'f-workflow', list: 'workflows', placeholder: 'workflow', 'aria-label': 'Workflow', value: filter.workflow });
  const wfList = h('datalist', { id: 'workflows' });
  const search = h('input', { type: 'search', id: 'f-q', placeholder: 'run id prefix or idempotency key', 'aria-label': 'Search by run id prefix or idempotency key', value: filter.q, size: 34 });
  const chips = h('div', { class: 'chips', id: 'counts', role: 'group', 'aria-label': 'Runs per status' });
  const tbody = h('tbody', { id: 'runs-body' });
  const more = h('button', { type: 'button', id: 'more', hidden: true, onclick: () => load(true) }, 'Load more');
  const liveNote = h('span', { class: 'muted', id: 'live-note' }, '');
  root.replaceChildren(
    h('h1', {}, 'Runs'),
    h('section', { class: 'card' },
      h('div', { class: 'row' }, h('label', { for: 'f-status' }, 'Status'), statusSel,
        h('label', { for: 'f-workflow' }, 'Workflow'), wfInput, wfList,
        h('label', { for: 'f-q' }, 'Search'), search, liveNote),
      chips,
      h('div', { class: 'scroll' }, h('table', { id: 'runs' },
        h('thead', {}, h('tr', {}, ['Run', 'Workflow', 'Status', 'Started', 'Duration', 'Seq'].map((c) => h('th', { scope: 'col' }, c)))),
        tbody)),
      more));

  function syncUrl() {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(filter)) if (v) p.set(k, v);
    const qs = p.toString();
    history.replaceState(null, '', '/' + (qs ? '?' + qs : ''));
  }

  function row(r) {
    const started = r.created_at ? new Date(r.created_at) : null;
    const ended = r.updated_at ? new Date(r.updated_at) : null;
    const running = !['succeeded', 'failed', 'canceled'].includes(r.status);
    const dur = started ? ((running ? Date.now() : ended) - started) : null;
    return h('tr', { dataset: { run: r.run_id, status: r.status } },
      h('td', { class: 'mono' }, h('a', { href: '/runs/' + r.run_id, title: r.run_id }, short(r.run_id)),
        r.idempotency_key ? h('div', { class: 'muted' }, 'key ' + r.idempotency_key) : null,
        r.forked_from ? h('div', { class: 'muted' }, 'fork of ', h('a', { href: '/runs/' + r.forked_from }, short(r.forked_from))) : null),
      h('td', {}, r.workflow),
      h('td', {}, badge(r.status), r.reason ? h('div', { class: 'muted' }, r.reason) : null),
      h('td', {}, fmtTime(r.created_at)),
      h('td', {}, fmtDur(dur) + (running ? ' …' : '')),
      h('td', {}, String(r.seq)));
  }

  async function load(append) {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(filter)) if (v) p.set(k, v);
    p.set('limit', '100');
    if (append && cursor) p.set('cursor', cursor);
    try {
      const page = await api('/v1/runs?' + p.toString());
      rows = append ? rows.concat(page.runs) : page.runs;
      cursor = page.next_cursor;
      tbody.replaceChildren(...rows.map(row));
      if (!rows.length) tbody.append(h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No runs match.')));
      more.hidden = !cursor;
      const total = Object.values(page.counts).reduce((a, b) => a + b, 0);
      chips.replaceChildren(
        h('button', { type: 'button', 'aria-pressed': String(!filter.status), onclick: () => setStatus('') }, 'all ' + total),
        ...STATUSES.map((st) => h('button', { type: 'button', class: 'badge st-' + st, 'aria-pressed': String(filter.status === st), dataset: { count: st }, onclick: () => setStatus(st) }, st + ' ' + page.counts[st])));
      const names = new Set(rows.map((r) => r.workflow));
      wfList.replaceChildren(...[...names].sort().map((n) => h('option', { value: n })));
      flash('');
    } catch (e) {
      flash('Cannot list runs: ' + e.message);
    }
  }

  function setStatus(st) { filter.status = st; statusSel.value = st; syncUrl(); load(false); }
  statusSel.addEventListener('change', () => setStatus(statusSel.value));
  const typed = debounce(() => { filter.workflow = wfInput.value.trim(); filter.q = search.value.trim(); syncUrl(); load(false); }, 250);
  wfInput.addEventListener('input', typed);
  search.addEventListener('input', typed);

  await load(false);
  // Live: every committed run event; re-read the list (debounced).
  const es = new EventSource('/v1/changes');
  const refresh = debounce(() => load(false), 300);
  es.onmessage = refresh;
  es.addEventListener('lagged', refresh);
  es.onopen = () => { liveNote.textContent = 'live'; };
  es.onerror = () => { liveNote.textContent = 'reconnecting…'; };
  onLeave(() => es.close());
}

// ------------------------------------------------------------------- run

/** One line about an event's payload. */
function summary(p) {
  const a = p.attempt !== undefined ? ' attempt ' + p.attempt : '';
  switch (p.type) {
    case 'RunCreated': return 'workflow ' + (p.workflow && p.workflow.name) + (p.idempotency_key ? ', key ' + p.idempotency_key : '');
    case 'RunForked': return 'fork of ' + (p.lineage && p.lineage.forked_from) + ' at seq ' + (p.lineage && p.lineage.at_seq);
    case 'StepAssigned': return p.step + a + ' → ' + p.agent + ' (' + p.why + ')';
    case 'StepUnassigned': return p.step + ': ' + p.reason + (p.blocked ? ' (waits)' : '');
    case 'StepStarted': return p.step + a + (p.agent ? ' on ' + p.agent : '');
    case 'StepSucceeded': return p.step + a + ' in ' + fmtDur(p.duration_ms);
    case 'StepFailed': return p.step + a + ': ' + p.kind + ' — ' + p.message + (p.next_retry_at ? ' (retry at ' + fmtTime(p.next_retry_at) + ')' : '');
    case 'StepAbandoned': return p.step + a + ': ' + p.reason;
    case 'StepSkipped': return p.step + ': ' + p.reason;
    case 'ChildRunStarted': return p.step + ' started child run ' + p.child_run_id;
    case 'CallbackIssued': return p.step + ': callback token issued';
    case 'CallbackAccepted': return p.step + ': accepted; waits for the callback';
    case 'CallbackReceived': return p.step + ': callback received';
    case 'PollStarted': return p.step + ': accepted; polls ' + p.url;
    case 'TimerStarted': return p.step + ' sleeps until ' + fmtTime(p.fire_at);
    case 'TimerFired': return p.step + ': timer fired';
    case 'SignalAwaited': return p.step + ' waits for the signal ' + p.name;
    case 'SignalReceived': return 'signal ' + p.name + ' (id ' + p.id + ')';
    case 'ApprovalRequested': return p.step + ' waits for ' + p.min_approvals + ' approval(s)' + (p.approvers && p.approvers.length ? ' from ' + p.approvers.join(', ') : '');
    case 'ApprovalDecided': return p.step + ': ' + p.decision + ' by ' + p.by + (p.comment ? ' — ' + p.comment : '');
    case 'RunCancelRequested': case 'RunQuarantined': case 'RunFailed': return p.reason || '';
    default: return '';
  }
}

/** Columns by dependency depth: [{id, col, row}] and the edges. */
function layout(steps) {
  const depth = {};
  const byId = Object.fromEntries(steps.map((st) => [st.id, st]));
  const visit = (id, seen) => {
    if (depth[id] !== undefined) return depth[id];
    if (seen.has(id)) return 0;
    seen.add(id);
    const needs = (byId[id] && byId[id].needs) || [];
    depth[id] = needs.length ? 1 + Math.max(...needs.map((n) => visit(n, seen))) : 0;
    return depth[id];
  };
  steps.forEach((st) => visit(st.id, new Set()));
  const rows = {};
  const nodes = steps.map((st) => {
    const col = depth[st.id];
    rows[col] = (rows[col] || 0) + 1;
    return { id: st.id, col, row: rows[col] - 1, needs: st.needs || [] };
  });
  return nodes;
}

async function runPage(root, id) {
  setNav('runs');
  const params = new URLSearchParams(location.search);
  const R = {
    id,
    at: params.has('at') ? Number(params.get('at')) : null,
    head: 0,
    status: null,
    state: null,
    attempts: null,
    agents: [],
    change: null,
    selectedStep: null,
    selectedAttempt: null,
    linkedSeqs: new Set(),
    events: { from: 1, rows: [], open: new Set() },
    es: null,
  };

  try {
    R.status = await api('/v1/runs/' + encodeURIComponent(id));
  } catch (e) {
    root.replaceChildren(h('h1', {}, 'Run ' + id), h('p', { class: 'error', role: 'alert' }, e.message), h('p', {}, h('a', { href: '/' }, 'All runs')));
    return;
  }
  R.id = R.status.run_id;
  R.head = R.status.seq;
  document.title = 'Run ' + short(R.id) + ' · Chronicle';

  const el = {
    head: h('section', { class: 'card', id: 'run-head' }),
    scrub: h('section', { class: 'card', id: 'scrubber', 'aria-label': 'Time travel' }),
    graph: h('section', { class: 'card', id: 'graph-card' }),
    panel: h('section', { class: 'card', id: 'step-panel', 'aria-live': 'polite' }),
    gantt: h('section', { class: 'card', id: 'gantt-card' }),
    events: h('section', { class: 'card', id: 'events-card' }),
  };
  root.replaceChildren(el.head, el.scrub, h('div', { class: 'grid2' }, el.graph, el.panel), el.gantt, el.events);

  // Scrubber ----------------------------------------------------------
  const range = h('input', { type: 'range', id: 'scrub', min: 1, max: Math.max(1, R.head), step: 1, value: R.at || R.head, 'aria-label': 'Event seq (time travel)', 'aria-valuetext': '' });
  const prev = h('button', { type: 'button', id: 'scrub-prev', 'aria-label': 'Previous event', onclick: () => travel((R.at || R.head) - 1) }, '◀');
  const next = h('button', { type: 'button', id: 'scrub-next', 'aria-label': 'Next event', onclick: () => travel((R.at || R.head) + 1) }, '▶');
  const info = h('span', { id: 'scrub-info' });
  const mode = h('span', { id: 'mode' });
  const liveBtn = h('button', { type: 'button', id: 'go-live', onclick: () => travel(null) }, 'Back to live');
  const seqInput = h('input', { type: 'number', id: 'jump-seq', min: 1, 'aria-label': 'Jump to seq', placeholder: 'seq', style: 'width: 90px' });
  const timeInput = h('input', { type: 'text', id: 'jump-time', 'aria-label': 'Jump to time (RFC 3339)', placeholder: '2026-11-30T10:00:00Z', size: 24 });
  const change = h('div', { class: 'change', id: 'change', hidden: true, 'aria-live': 'polite' });
  el.scrub.replaceChildren(
    h('h2', {}, 'Time travel'),
    h('div', { class: 'scrubber' }, prev, range, next),
    h('div', { class: 'scrub-info' }, mode, info, liveBtn,
      h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); if (seqInput.value) travel(Number(seqInput.value)); } },
        h('label', { for: 'jump-seq' }, 'Jump to seq'), seqInput, h('button', { type: 'submit' }, 'Go')),
      h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); jumpTime(timeInput.value.trim()); } },
        h('label', { for: 'jump-time' }, 'to time'), timeInput, h('button', { type: 'submit' }, 'Go'))),
    change);
  range.addEventListener('input', () => travel(Number(range.value)));

  function syncUrl() {
    const url = '/runs/' + R.id + (R.at !== null ? '?at=' + R.at : '');
    history.replaceState(null, '', url);
  }

  const fetchAt = debounce(() => loadState(), 120);
  function travel(seq) {
    if (seq !== null) seq = Math.max(1, Math.min(R.head, seq));
    R.at = seq;
    range.value = seq === null ? R.head : seq;
    syncUrl();
    renderScrub();
    fetchAt();
  }

  async function jumpTime(t) {
    if (!t) return;
    try {
      const st = await api('/v1/runs/' + R.id + '/state?at_time=' + encodeURIComponent(t));
      travel(st.seq);
      flash('');
    } catch (e) { flash('Cannot jump to ' + t + ': ' + e.message); }
  }

  function renderScrub() {
    range.max = Math.max(1, R.head);
    const seq = R.at === null ? R.head : R.at;
    range.setAttribute('aria-valuetext', 'event ' + seq + ' of ' + R.head);
    info.textContent = 'event ' + seq + ' of ' + R.head + (R.state && R.state.updated_at ? ' · ' + fmtTime(R.state.updated_at) : '');
    mode.replaceChildren(R.at === null
      ? h('span', { class: 'live-banner' }, 'Live')
      : h('span', { class: 'travel-banner' }, 'Time travel: state after event ' + R.at));
    liveBtn.disabled = R.at === null;
    prev.disabled = seq <= 1;
    next.disabled = seq >= R.head;
  }

  // Loading -----------------------------------------------------------
  async function loadState() {
    const q = R.at !== null ? '?at=' + R.at : '';
    const want = R.at;
    try {
      const [state, attempts] = await Promise.all([
        api('/v1/runs/' + R.id + '/state' + q),
        api('/v1/runs/' + R.id + '/attempts' + q),
      ]);
      let changeAt = null;
      const seq = want === null ? state.seq : want;
      if (seq >= 1) {
        const t = await api('/v1/runs/' + R.id + '/timeline?at=' + seq + '&since=' + (seq - 1));
        changeAt = t[0] || null;
      }
      if (R.at !== want) return; // the scrubber moved on meanwhile
      R.state = state;
      R.attempts = attempts;
      R.change = changeAt;
      // Time travel shows the step the event changed, unless one was picked.
      if (R.at !== null && changeAt && changeAt.step && !R.pinned) R.selectedStep = changeAt.step;
      renderAll();
      const changed = el.graph.querySelector('.node.changed');
      if (changed && R.at !== null) {
        // Scroll the graph's own box (not the page) to the changed step.
        const wrap = el.graph.querySelector('.graph-wrap');
        const box = changed.getBBox();
        const m = changed.transform.baseVal.consolidate();
        const y = (m ? m.matrix.f : 0) + box.y, x = (m ? m.matrix.e : 0) + box.x;
        if (y < wrap.scrollTop || y + box.height > wrap.scrollTop + wrap.clientHeight) wrap.scrollTop = Math.max(0, y - wrap.clientHeight / 2);
        if (x < wrap.scrollLeft || x + box.width > wrap.scrollLeft + wrap.clientWidth) wrap.scrollLeft = Math.max(0, x - wrap.clientWidth / 2);
      }
      flash('');
    } catch (e) { flash('Cannot read the run: ' + e.message); }
  }

  async function loadStatus() {
    try {
      R.status = await api('/v1/runs/' + R.id);
      R.head = Math.max(R.head, R.status.seq);
    } catch (e) { flash(e.message); }
  }

  async function loadAgents() {
    try { R.agents = (await api('/v1/agents')).agents; } catch (_) { R.agents = []; }
  }

  function renderAll() {
    root.setAttribute('aria-busy', 'false');
    renderHead();
    renderScrub();
    renderChange();
    renderGraph();
    renderPanel();
    renderGantt();
    renderEvents();
  }

  // Header and actions ------------------------------------------------
  function renderHead() {
    const st = R.status;
    const shown = R.state || st;
    const terminal = ['succeeded', 'failed', 'canceled'].includes(st.status);
    const dur = st.created_at ? ((terminal ? new Date(st.updated_at) : Date.now()) - new Date(st.created_at)) : null;
    const lineage = [];
    if (st.parent) lineage.push(h('span', {}, 'child of ', h('a', { href: '/runs/' + st.parent.run_id, id: 'parent-run' }, short(st.parent.run_id)), ' (step ' + st.parent.step + ')'));
    if (st.forked_from) lineage.push(h('span', {}, 'forked from ', h('a', { href: '/runs/' + st.forked_from.run_id + '?at=' + st.forked_from.at_seq, id: 'forked-from' }, short(st.forked_from.run_id) + ' at seq ' + st.forked_from.at_seq)));
    if (st.forks && st.forks.length) lineage.push(h('span', { id: 'forks' }, 'forks: ', st.forks.map((f, i) => [i ? ', ' : '', h('a', { href: '/runs/' + f.run_id }, short(f.run_id) + ' (seq ' + f.at_seq + ')')])));
    const act = (label, path, opts) => h('button', Object.assign({ type: 'button', id: 'act-' + path, onclick: () => control(path, label) }, opts), label);
    el.head.replaceChildren(
      h('div', { class: 'runhead' },
        h('div', {},
          h('h1', {}, 'Run ', h('span', { class: 'mono', id: 'run-id' }, R.id), ' ',
            h('span', { id: 'run-status', dataset: { status: shown.status } }, badge(shown.status)),
            R.at !== null ? h('span', { class: 'muted' }, ' (at seq ' + R.at + '; now ', badge(st.status), ')') : null),
          h('div', { class: 'facts' },
            h('span', {}, 'workflow ', h('b', {}, st.workflow)),
            h('span', {}, 'started ', h('b', {}, fmtTime(st.created_at))),
            h('span', {}, 'duration ', h('b', {}, fmtDur(dur))),
            h('span', {}, 'events ', h('b', { id: 'head-seq' }, String(R.head))),
            lineage),
          st.failure ? h('p', { class: 'error' }, 'Failure: ' + st.failure) : null,
          st.quarantine ? h('p', { class: 'error' }, 'Quarantined: ' + st.quarantine.reason) : null),
        h('div', { class: 'actions', role: 'group', 'aria-label': 'Actions' },
          act('Pause', 'pause', { disabled: st.status !== 'running' }),
          act('Resume', 'resume', { disabled: st.status !== 'paused' }),
          act('Release', 'release', { disabled: st.status !== 'quarantined' }),
          act('Cancel', 'cancel', { disabled: terminal, class: 'danger' }),
          h('button', { type: 'button', id: 'act-fork', class: 'primary', onclick: forkDialog }, 'Fork from seq ' + (R.at === null ? R.head : R.at) + '…'))));
  }

  async function control(path, label) {
    const body = [h('p', {}, label + ' run ' + R.id + '? This is recorded in its history.')];
    if (path === 'cancel') body.push(h('label', { for: 'cancel-reason' }, 'Reason (recorded)'), h('input', { type: 'text', id: 'cancel-reason', name: 'reason', value: 'canceled from the web UI', size: 50 }));
    const ok = await confirmDialog(label + ' run', body, label, path === 'cancel');
    if (!ok) return;
    try {
      await api('/v1/runs/' + R.id + '/' + path, { method: 'POST', body: path === 'cancel' ? { reason: ok.reason || 'canceled from the web UI' } : {} });
      flash(label + ': done (recorded in the history).', true);
      await loadStatus();
      await loadState();
    } catch (e) { flash(label + ' failed: ' + e.message); }
  }

  async function forkDialog() {
    const at = R.at === null ? R.head : R.at;
    const input = (R.state && R.state.input) || {};
    const body = [
      h('p', {}, 'Start a new run from this run\'s state after event ' + at + '. Steps that had succeeded by then keep their outputs; the rest run again.'),
      h('label', { for: 'fork-at' }, 'At seq'), h('input', { type: 'number', id: 'fork-at', name: 'at', value: at, min: 1, max: R.head }),
      h('label', { for: 'fork-input' }, 'Input (JSON object; leave as is to keep it)'), h('textarea', { id: 'fork-input', name: 'input' }, json(input)),
      h('label', { for: 'fork-outputs' }, 'Step outputs to override (JSON: {"step": output})'), h('textarea', { id: 'fork-outputs', name: 'set_output' }, '{}'),
    ];
    const ok = await confirmDialog('Fork from here', body, 'Fork');
    if (!ok) return;
    let req;
    try {
      req = { at: Number(ok.at) };
      const newInput = JSON.parse(ok.input || '{}');
      if (JSON.stringify(newInput) !== JSON.stringify(input)) req.input = newInput;
      req.set_output = JSON.parse(ok.set_output || '{}');
    } catch (e) { flash('Fork: the JSON does not parse: ' + e.message); return; }
    try {
      const r = await api('/v1/runs/' + R.id + '/fork', { method: 'POST', body: req });
      location.assign('/runs/' + r.run_id);
    } catch (e) { flash('Fork failed: ' + e.message); }
  }

  // The change the event at the seq made ------------------------------
  function renderChange() {
    const c = R.change;
    change.hidden = !c;
    if (!c) return;
    change.replaceChildren(
      h('b', {}, 'Event ' + c.seq + ': ' + c.event + (c.step ? ' (' + c.step + ')' : '')), ' · ', fmtTime(c.at),
      c.changes.length ? h('ul', {}, c.changes.map((x) => h('li', {}, x))) : h('span', { class: 'muted' }, ' — no status changed'));
  }

  // Graph -------------------------------------------------------------
  function renderGraph() {
    const wf = R.state.workflow || { steps: [] };
    const nodes = layout(wf.steps);
    const W = 180, H = 50, GX = 60, GY = 12;
    const pos = Object.fromEntries(nodes.map((n) => [n.id, { x: 10 + n.col * (W + GX), y: 10 + n.row * (H + GY) }]));
    const cols = Math.max(1, ...nodes.map((n) => n.col + 1));
    const rows = Math.max(1, ...nodes.map((n) => n.row + 1));
    const width = 20 + cols * (W + GX) - GX, height = 20 + rows * (H + GY) - GY;
    const svg = s('svg', { class: 'graph', id: 'graph', width, height, viewBox: '0 0 ' + width + ' ' + height, role: 'group', 'aria-label': 'Workflow graph: steps and their needs' });
    svg.append(s('defs', {}, s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' }, s('path', { d: 'M 0 0 L 10 5 L 0 10 z', fill: '#9aa1ad' }))));
    for (const n of nodes) for (const need of n.needs) {
      const a = pos[need], b = pos[n.id];
      if (!a || !b) continue;
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
      svg.append(s('path', { class: 'edge', d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`, 'marker-end': 'url(#arrow)' }));
    }
    const changedStep = R.change && R.change.step;
    for (const n of nodes) {
      const st = R.state.steps[n.id] || { status: 'waiting', attempts: [] };
      const tries = (st.attempts || []).length;
      const last = (st.attempts || [])[tries - 1];
      const agent = last && last.agent ? last.agent : '';
      const p = pos[n.id];
      const cls = 'node n-' + st.status + (n.id === R.selectedStep ? ' selected' : '') + (n.id === changedStep ? ' changed' : '');
      const g = s('g', { class: cls, tabindex: 0, role: 'button', 'data-step': n.id, 'data-status': st.status, transform: `translate(${p.x},${p.y})`, 'aria-label': `step ${n.id}: ${st.status}, ${tries} attempt(s)${agent ? ', agent ' + agent : ''}` },
        s('rect', { width: W, height: H, rx: 6 }),
        s('text', { x: 8, y: 15, class: 'title' }, n.id.length > 24 ? n.id.slice(0, 23) + '…' : n.id),
        s('text', { x: 8, y: 30 }, st.status.toUpperCase() + ' · ' + tries + ' attempt' + (tries === 1 ? '' : 's')),
        s('text', { x: 8, y: 44, class: 'muted' }, agent ? 'agent ' + agent : (n.id === changedStep ? '◆ changed here' : '')),
        s('title', {}, n.id + ': ' + st.status));
      const pick = () => { R.selectedStep = n.id; R.pinned = true; renderGraph(); renderPanel(); const again = el.graph.querySelector(`[data-step="${CSS.escape(n.id)}"]`); if (again) again.focus(); };
      g.addEventListener('click', pick);
      g.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); pick(); } });
      svg.append(g);
    }
    el.graph.replaceChildren(h('h2', {}, 'Steps'), h('div', { class: 'graph-wrap' }, svg),
      h('div', { class: 'legend muted' }, 'Each box: step, STATUS · attempts, agent. Dashed outline: the step the event at this seq changed.'));
  }

  // Step panel ----------------------------------------------------------
  function renderPanel() {
    const wf = R.state.workflow || { steps: [] };
    if (!R.selectedStep || !wf.steps.some((x) => x.id === R.selectedStep)) {
      const first = wf.steps.find((x) => (R.state.steps[x.id] || {}).status !== 'succeeded') || wf.steps[0];
      R.selectedStep = first ? first.id : null;
    }
    const id = R.selectedStep;
    if (!id) { el.panel.replaceChildren(h('h2', {}, 'Step'), h('p', { class: 'muted' }, 'No steps.')); return; }
    const st = R.state.steps[id] || { status: 'waiting', attempts: [] };
    const tries = st.attempts || [];
    const last = tries[tries.length - 1];
    const views = (R.attempts.attempts || []).filter((a) => a.step === id);
    const lastView = views[views.length - 1];
    const decisions = R.attempts.routing[id] || [];
    const decision = decisions[decisions.length - 1];
    const agentName = (last && last.agent) || (decision && decision.agent);
    const agent = R.agents.find((a) => a.name === agentName);
    const lastError = [...tries].reverse().find((t) => t.error);
    const def = wf.steps.find((x) => x.id === id) || {};
    el.panel.replaceChildren(
      h('h2', {}, 'Step ', h('span', { class: 'mono', id: 'panel-step' }, id), ' ', badge(st.status)),
      h('dl', { class: 'kv' },
        h('dt', {}, 'Needs'), h('dd', {}, (def.needs || []).join(', ') || '—'),
        h('dt', {}, 'Attempts'), h('dd', {}, String(tries.length) + (st.retry_at ? ' · next at ' + fmtTime(st.retry_at) : '')),
        h('dt', {}, 'Routing'), h('dd', { id: 'panel-routing' }, decision
          ? (decision.agent ? 'agent ' + decision.agent + ' — ' + decision.why : 'unassigned — ' + decision.why + (decision.blocked ? ' (waiting for a circuit)' : ''))
          : (st.reason ? st.reason : 'no agent (runs in the engine)')),
        h('dt', {}, 'Circuit'), h('dd', {}, agent ? [badge(agent.circuit.state), ' failures ' + agent.circuit.failures + (agent.circuit.open_until ? ', open until ' + fmtTime(agent.circuit.open_until) : '') + ', load ' + agent.load] : '—'),
        st.wait ? [h('dt', {}, 'Waits for'), h('dd', { id: 'panel-wait' }, waitText(st))] : null,
        last && last.child ? [h('dt', {}, 'Child run'), h('dd', {}, h('a', { href: '/runs/' + last.child, id: 'panel-child' }, last.child))] : null,
        h('dt', {}, 'Last error'), h('dd', { class: lastError ? 'error' : '' }, lastError ? lastError.error : '—'),
        st.reason ? [h('dt', {}, 'Reason'), h('dd', {}, st.reason)] : null),
      R.at === null && st.wait && st.wait.for === 'approval' ? approvalForm(id) : null,
      R.at === null && st.wait && st.wait.for === 'signal' ? signalForm(st.wait.name) : null,
      h('h3', {}, 'Resolved input'), h('pre', { id: 'panel-input' }, last ? json(last.input) : '— (not started)'),
      h('h3', {}, 'Output'), h('pre', { id: 'panel-output' }, st.output !== undefined ? json(st.output) : '—'),
      h('h3', {}, 'Stderr (excerpt)'), h('pre', {}, lastView && lastView.stderr ? (lastView.stderr_cut ? '…' : '') + lastView.stderr : '—'));
  }

  function waitText(st) {
    const w = st.wait;
    const a = (st.attempts || [])[st.attempts.length - 1];
    let t = w.for === 'timer' ? 'its timer, due at ' + fmtTime(w.fire_at)
      : w.for === 'signal' ? 'the signal "' + w.name + '"'
      : w.for === 'callback' ? (w.accepted ? 'its callback' : 'the service to accept its request')
      : w.for === 'poll' ? 'a terminal state from ' + w.url
      : 'approval: ' + (w.approved_by || []).length + ' of ' + w.min_approvals + ((w.approvers || []).length ? ' (approvers: ' + w.approvers.join(', ') + ')' : '');
    if (a && a.deadline) t += '; times out at ' + fmtTime(a.deadline);
    return t;
  }

  function approvalForm(step) {
    const who = h('input', { type: 'text', id: 'approve-as', name: 'by', placeholder: 'your name', size: 14, 'aria-label': 'Decide as' });
    const note = h('input', { type: 'text', id: 'approve-comment', placeholder: 'comment (recorded)', size: 24, 'aria-label': 'Comment' });
    const decide = async (decision) => {
      if (!who.value.trim()) { flash('Say who decides.'); who.focus(); return; }
      const ok = await confirmDialog(decision === 'approve' ? 'Approve' : 'Reject', [h('p', {}, (decision === 'approve' ? 'Approve' : 'Reject') + ' step ' + step + ' as ' + who.value.trim() + '? This is recorded in the history.')], decision === 'approve' ? 'Approve' : 'Reject', decision === 'reject');
      if (!ok) return;
      try {
        await api('/v1/runs/' + R.id + '/steps/' + encodeURIComponent(step) + '/approval', { method: 'POST', body: { by: who.value.trim(), decision, comment: note.value.trim() || null } });
        flash('Recorded: ' + decision + ' by ' + who.value.trim(), true);
        await loadStatus(); await loadState();
      } catch (e) { flash(e.message); }
    };
    return h('div', { class: 'row', role: 'group', 'aria-label': 'Approval' }, who, note,
      h('button', { type: 'button', class: 'primary', id: 'act-approve', onclick: () => decide('approve') }, 'Approve…'),
      h('button', { type: 'button', class: 'danger', id: 'act-reject', onclick: () => decide('reject') }, 'Reject…'));
  }

  function signalForm(name) {
    const data = h('input', { type: 'text', id: 'signal-data', placeholder: 'data (JSON)', size: 30, 'aria-label': 'Signal data (JSON)' });
    const send = async () => {
      let value = null;
      try { value = data.value.trim() ? JSON.parse(data.value) : null; } catch (e) { flash('The data is not JSON: ' + e.message); return; }
      const ok = await confirmDialog('Send signal', [h('p', {}, 'Send the signal "' + name + '" to run ' + R.id + '? It is recorded in the history.')], 'Send');
      if (!ok) return;
      try {
        await api('/v1/runs/' + R.id + '/signals/' + encodeURIComponent(name), { method: 'POST', body: { data: value } });
        flash('Signal ' + name + ' sent.', true);
        await loadStatus(); await loadState();
      } catch (e) { flash(e.message); }
    };
    return h('div', { class: 'row', role: 'group', 'aria-label': 'Signal' }, data, h('button', { type: 'button', class: 'primary', id: 'act-signal', onclick: send }, 'Send signal "' + name + '"…'));
  }

  // Gantt -------------------------------------------------------------
  function renderGantt() {
    const list = R.attempts.attempts || [];
    const t0 = new Date(R.state.created_at).getTime();
    const terminal = ['succeeded', 'failed', 'canceled'].includes(R.state.status);
    const liveEnd = R.at === null && !terminal ? Date.now() : new Date(R.state.updated_at).getTime();
    let t1 = Math.max(liveEnd, t0 + 1);
    for (const a of list) {
      if (a.ended_at) t1 = Math.max(t1, new Date(a.ended_at).getTime());
      if (a.next_retry_at) t1 = Math.max(t1, new Date(a.next_retry_at).getTime());
    }
    const span = t1 - t0;
    const pct = (t) => ((new Date(t).getTime() - t0) / span * 100);
    const wf = R.state.workflow || { steps: [] };
    const byStep = {};
    for (const a of list) (byStep[a.step] = byStep[a.step] || []).push(a);
    const rows = wf.steps.map((def) => {
      const track = h('div', { class: 'g-track' });
      const mine = byStep[def.id] || [];
      mine.forEach((a, i) => {
        const left = pct(a.started_at);
        const endT = a.ended_at || new Date(liveEnd).toISOString();
        const width = Math.max(0.3, pct(endT) - left);
        const label = '#' + a.attempt + ' ' + a.outcome.replace('_', ' ');
        const bar = h('button', {
          type: 'button', class: 'g-bar oc-' + a.outcome + (R.selectedAttempt === a.started_seq ? ' selected' : ''),
          style: `left:${left}%;width:${width}%`, dataset: { seq: a.started_seq, step: a.step, outcome: a.outcome },
          title: `${a.step} attempt ${a.attempt}: ${a.outcome}${a.agent ? ' on ' + a.agent : ''}\nstarted ${fmtTime(a.started_at)} (seq ${a.started_seq})` + (a.ended_at ? `\nended ${fmtTime(a.ended_at)} (seq ${a.ended_seq}) after ${fmtDur(new Date(a.ended_at) - new Date(a.started_at))}` : '\nrunning') + (a.error ? '\n' + a.error : ''),
          'aria-label': `${a.step} attempt ${a.attempt} ${a.outcome}, events ${a.started_seq} to ${a.ended_seq || 'now'}`,
          onclick: () => selectAttempt(a),
        }, label);
        track.append(bar);
        // The backoff wait after a failure: to the next attempt, or to when it is due.
        if (a.next_retry_at && a.ended_at) {
          const nextA = mine[i + 1];
          const until = nextA ? nextA.started_at : a.next_retry_at;
          const wl = pct(a.ended_at), ww = Math.max(0.2, pct(until) - wl);
          track.append(h('div', { class: 'g-wait', style: `left:${wl}%;width:${ww}%`, title: 'backoff until ' + fmtTime(a.next_retry_at) }));
        }
      });
      return h('div', { class: 'g-row', dataset: { step: def.id } }, h('div', { class: 'g-label', title: def.id }, def.id), track);
    });
    el.gantt.replaceChildren(
      h('h2', {}, 'Attempts'),
      h('div', { class: 'g-axis' }, h('div', {}, ''), h('div', {}, h('span', {}, fmtTime(new Date(t0).toISOString())), h('span', {}, '+' + fmtDur(span)))),
      h('div', { class: 'gantt', id: 'gantt' }, rows),
      h('div', { class: 'legend' }, ['succeeded', 'failed', 'timed_out', 'abandoned', 'running', 'canceled'].map((o) => h('span', { class: 'badge oc-' + o + (o === 'succeeded' ? ' st-succeeded' : '') }, o.replace('_', ' '))),
        h('span', {}, h('span', { class: 'g-wait', style: 'position:static;display:inline-block;width:30px' }), ' backoff wait'),
        h('span', { class: 'muted' }, 'Click an attempt to see its events.')));
  }

  function selectAttempt(a) {
    R.selectedAttempt = a.started_seq;
    R.selectedStep = a.step;
    R.linkedSeqs = new Set([a.started_seq, a.ended_seq].filter(Boolean));
    renderGraph();
    renderPanel();
    renderGantt();
    loadEvents(Math.max(1, a.started_seq - 5));
  }

  // Events ------------------------------------------------------------
  async function loadEvents(from) {
    R.events.from = Math.max(1, from);
    try {
      const page = await api('/v1/runs/' + R.id + '/events?after=' + (R.events.from - 1) + '&limit=' + EVENTS_PAGE);
      R.events.rows = page.events;
      R.head = Math.max(R.head, page.last_seq);
      renderEvents();
      renderScrub();
    } catch (e) { flash('Cannot read events: ' + e.message); }
  }

  function renderEvents() {
    const ev = R.events;
    const cur = R.at === null ? null : R.at;
    const lastPage = Math.max(1, R.head - EVENTS_PAGE + 1);
    const jump = h('input', { type: 'number', id: 'events-seq', min: 1, 'aria-label': 'Show events from seq', style: 'width: 90px' });
    const body = h('tbody', { id: 'events-body' });
    for (const e of ev.rows) {
      const p = e.payload || {};
      const attempt = ((R.attempts && R.attempts.attempts) || []).find((a) => a.started_seq === e.seq || a.ended_seq === e.seq);
      const cls = 'ev' + (e.seq === cur ? ' current' : '') + (R.linkedSeqs.has(e.seq) ? ' linked' : '');
      const toggle = () => { if (ev.open.has(e.seq)) ev.open.delete(e.seq); else ev.open.add(e.seq); if (attempt) { R.selectedAttempt = attempt.started_seq; R.linkedSeqs = new Set([attempt.started_seq, attempt.ended_seq].filter(Boolean)); renderGantt(); } renderEvents(); };
      body.append(h('tr', { class: cls, tabindex: 0, 'aria-expanded': String(ev.open.has(e.seq)), dataset: { seq: e.seq, type: p.type || '' }, onclick: toggle, onkeydown: (k) => { if (k.key === 'Enter') toggle(); } },
        h('td', { class: 'mono' }, String(e.seq)), h('td', { class: 'mono' }, fmtTime(e.recorded_at).slice(11)), h('td', {}, p.type || e.error || ''), h('td', {}, summary(p))));
      if (ev.open.has(e.seq)) {
        body.append(h('tr', { class: 'detail' }, h('td', { colspan: 4 },
          h('div', { class: 'row' }, h('button', { type: 'button', onclick: () => travel(e.seq) }, 'Time-travel to this event'),
            h('span', { class: 'muted mono' }, 'hash ' + e.hash)),
          h('pre', {}, json(e.payload || e)))));
      }
    }
    el.events.replaceChildren(
      h('h2', {}, 'Events'),
      h('div', { class: 'pager', role: 'group', 'aria-label': 'Event pages' },
        h('button', { type: 'button', onclick: () => loadEvents(1), disabled: ev.from <= 1 }, '« First'),
        h('button', { type: 'button', onclick: () => loadEvents(ev.from - EVENTS_PAGE), disabled: ev.from <= 1 }, '‹ Prev'),
        h('span', {}, ev.rows.length ? `seq ${ev.rows[0].seq}–${ev.rows[ev.rows.length - 1].seq} of ${R.head}` : 'no events'),
        h('button', { type: 'button', onclick: () => loadEvents(ev.from + EVENTS_PAGE), disabled: ev.from + EVENTS_PAGE > R.head }, 'Next ›'),
        h('button', { type: 'button', id: 'events-last', onclick: () => loadEvents(lastPage), disabled: ev.from >= lastPage }, 'Last »'),
        h('form', { class: 'row', onsubmit: (f) => { f.preventDefault(); if (jump.value) loadEvents(Number(jump.value)); } }, h('label', { for: 'events-seq' }, 'from seq'), jump, h('button', { type: 'submit' }, 'Show'))),
      h('div', { class: 'scroll' }, h('table', { class: 'events' },
        h('thead', {}, h('tr', {}, ['Seq', 'Time', 'Event', 'Summary'].map((c) => h('th', { scope: 'col' }, c)))), body)));
  }

  // Live ----------------------------------------------------------------
  const refreshLive = debounce(async () => {
    await loadStatus();
    if (R.at === null) await loadState();
    else { renderHead(); renderScrub(); }
  }, 200);

  function follow() {
    if (['succeeded', 'failed', 'canceled'].includes(R.status.status)) return;
    // From the newest event listed when the list reaches the end (an
    // event may have committed between the page and the head being read).
    const rows = R.events.rows;
    const tail = rows.length ? rows[rows.length - 1].seq : 0;
    const after = rows.length < EVENTS_PAGE && tail > 0 ? Math.min(tail, R.head) : R.head;
    const es = new EventSource('/v1/runs/' + R.id + '/events/stream?after=' + after);
    R.es = es;
    es.onmessage = (m) => {
      const env = JSON.parse(m.data);
      R.head = Math.max(R.head, env.seq);
      // Append to the page when it shows the newest events.
      if (R.events.rows.length < EVENTS_PAGE && (!R.events.rows.length || R.events.rows[R.events.rows.length - 1].seq === env.seq - 1)) {
        R.events.rows.push(env);
        renderEvents();
      }
      refreshLive();
    };
    es.addEventListener('end', () => { es.close(); refreshLive(); });
    onLeave(() => es.close());
  }

  // Start -------------------------------------------------------------
  const atSeq = R.at === null ? R.head : R.at;
  await Promise.all([loadAgents(), loadState()]);
  if (R.at !== null && (R.at < 1 || R.at > R.head)) flash('seq ' + R.at + ' is outside the history (1..' + R.head + ')');
  // Live: the newest page; at a seq: the page around it.
  await loadEvents(R.at === null ? R.head - EVENTS_PAGE + 1 : atSeq - Math.floor(EVENTS_PAGE / 2));
  follow();
  document.body.dataset.ready = 'run';
}

// ---------------------------------------------------------------- verify

async function verifyPage(root) {
  setNav('verify');
  document.title = 'Verify · Chronicle';
  const out = h('div', { id: 'verify-result', 'aria-live': 'polite' });
  const runInput = h('input', { type: 'text', id: 'verify-run', placeholder: 'run id (empty: every stream)', size: 40, 'aria-label': 'Run to verify' });
  const go = h('button', { type: 'submit', class: 'primary', id: 'verify-go' }, 'Run verify');
  root.replaceChildren(h('h1', {}, 'Verify'),
    h('section', { class: 'card' },
      h('p', {}, 'Recompute every hash chain and check every snapshot against the fold of its events, as ', h('code', {}, 'chronicle verify'), ' does.'),
      h('form', { class: 'row', onsubmit: async (e) => {
        e.preventDefault();
        go.disabled = true;
        out.replaceChildren(h('p', { class: 'muted' }, 'Verifying…'));
        try {
          const run = runInput.value.trim();
          const v = await api(run ? '/v1/runs/' + encodeURIComponent(run) + '/verify' : '/v1/verify');
          out.replaceChildren(
            h('p', { id: 'verify-ok', dataset: { ok: String(v.ok) } }, v.ok ? badge('succeeded', 'all good') : badge('failed', 'problems found'), ' ', v.streams.length + ' stream(s) checked'),
            v.journal && v.journal.problem ? h('p', { class: 'error' }, 'Journal: ' + v.journal.problem) : null,
            h('div', { class: 'scroll' }, h('table', {},
              h('thead', {}, h('tr', {}, ['Stream', 'Events', 'Chain', 'Fold', 'Snapshots', 'First bad seq', 'Problems'].map((c) => h('th', { scope: 'col' }, c)))),
              h('tbody', {}, v.streams.map((r) => h('tr', { dataset: { stream: r.stream } },
                h('td', { class: 'mono' }, /^[0-9a-f-]{36}$/.test(r.stream) ? h('a', { href: '/runs/' + r.stream }, r.stream) : r.stream),
                h('td', {}, String(r.events)),
                h('td', {}, r.chain_ok ? badge('succeeded', 'ok') : badge('failed', 'broken')),
                h('td', {}, r.fold_ok ? badge('succeeded', 'ok') : badge('failed', 'fails')),
                h('td', {}, String(r.snapshots_checked)),
                h('td', { class: r.first_bad_seq ? 'error' : '' }, r.first_bad_seq ? String(r.first_bad_seq) : '—'),
                h('td', {}, (r.problems || []).join('; ') || '—')))))));
          flash('');
        } catch (err) { out.replaceChildren(h('p', { class: 'error' }, err.message)); }
        go.disabled = false;
      } }, h('label', { for: 'verify-run' }, 'Run'), runInput, go),
      out));
}

// ---------------------------------------------------------------- agents

async function agentsPage(root) {
  setNav('agents');
  document.title = 'Agents · Chronicle';
  root.replaceChildren(h('h1', {}, 'Agents'), h('p', { class: 'muted' }, 'Loading…'));
  const render = async () => {
    try {
      const v = await api('/v1/agents');
      root.replaceChildren(h('h1', {}, 'Agents'),
        h('section', { class: 'card' }, v.agents.length ? h('div', { class: 'scroll' }, h('table', { id: 'agents' },
          h('thead', {}, h('tr', {}, ['Agent', 'Skills', 'Load', 'Circuit', 'Health', 'Recent transitions'].map((c) => h('th', { scope: 'col' }, c)))),
          h('tbody', {}, v.agents.map((a) => h('tr', { dataset: { agent: a.name } },
            h('td', {}, h('b', {}, a.name), h('div', { class: 'muted' }, (a.workflows || []).join(', '))),
            h('td', {}, (a.skills || []).join(', ') || '—'),
            h('td', {}, a.load + (a.concurrency ? ' / ' + a.concurrency : '')),
            h('td', {}, badge(a.circuit.state), ' failures ' + a.circuit.failures, a.circuit.open_until ? h('div', { class: 'muted' }, 'open until ' + fmtTime(a.circuit.open_until)) : null),
            h('td', {}, a.health ? [badge(a.health.healthy ? 'succeeded' : 'failed', a.health.healthy ? 'healthy' : 'unhealthy'), h('div', { class: 'muted' }, a.health.detail)] : '—'),
            h('td', {}, (a.recent || []).length ? h('ul', {}, a.recent.slice().reverse().map((r) => h('li', {}, fmtTime(r.at) + ' ' + r.event))) : '—')))))) : h('p', { class: 'muted' }, 'No agents: no workflow run here declares one.')));
    } catch (e) { flash('Cannot list agents: ' + e.message); }
  };
  await render();
  const t = setInterval(render, 5000);
  onLeave(() => clearInterval(t));
}

// ---------------------------------------------------------------- router

async function route() {
  for (const f of teardown) f();
  teardown = [];
  const root = document.getElementById('app');
  root.setAttribute('aria-busy', 'true');
  const path = location.pathname;
  let m;
  if (path === '/') await runsPage(root);
  else if ((m = path.match(/^\/runs\/([^/]+)$/))) await runPage(root, decodeURIComponent(m[1]));
  else if (path === '/verify') await verifyPage(root);
  else if (path === '/agents') await agentsPage(root);
  else root.replaceChildren(h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '/' }, 'All runs')));
  root.setAttribute('aria-busy', 'false');
}

window.addEventListener('DOMContentLoaded', route);
