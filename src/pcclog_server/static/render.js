/* pcclog viewer: the page's view of the sessions: the session list, the
 * grid of panes (open, close, full screen, active pane) and the frame loop
 * that writes every pane's DOM at most once per animation frame.
 *
 * `createView(model)` builds it over the protocol's sessions; `model`:
 *   sessions          the Map of sessions (ViewerProtocol.sessions)
 *   ensureSession(id) the session of that id, created if new
 *   levels()          the level table (levels.js), loaded before any pane opens
 */

import { $, h, toast } from './dom.js';
import { fmtAgo, plural, statusLabel } from './format.js';
import { Pane } from './pane.js';

const MAX_FRAME_GAP_MS = 200;
const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });

export function createView({ sessions, ensureSession, levels }) {
  /** @type {Map<string, Pane>} */
  const panes = new Map();
  const dirtySessions = new Set();
  let maximizedId = null;
  let activePaneId = null;
  let rafId = 0;
  let nextFrameAt = 0;
  let frameTimer = 0;
  const stats = { frames: 0, frameMs: 0, frameMaxMs: 0, messages: 0 };

  const listEl = $('session-list');
  const noSessionsEl = $('no-sessions');
  const summaryEl = $('session-summary');
  const filterEl = $('session-filter');
  const panesEl = $('panes');
  const noPanesEl = $('no-panes');

  // What a pane may ask of the page.
  const host = {
    get levels() { return levels(); },
    scheduleFrame: () => scheduleFrame(),
    closePane: (id) => closePane(id),
    toggleMaximize: (id) => toggleMaximize(id),
    setActivePane: (id) => setActivePane(id),
    maximized: () => maximizedId,
  };

  function markDirty(s) {
    dirtySessions.add(s);
    scheduleFrame();
  }

  /** A new entry of `s`: to its pane's queue, if it has a pane. */
  function enqueue(s, e) {
    const p = panes.get(s.id);
    if (p) p.enqueue(e);
  }

  // ---------------------------------------------------------------- session list
  function insertItem(s) {
    const badge = h('span', { class: 'badge', 'data-testid': 'status-badge' });
    const name = h('span', { class: 'si-name', text: s.id });
    const lines = h('span', { class: 'si-lines' });
    const errors = h('span', { class: 'si-errors' });
    const ago = h('span', { class: 'si-ago' });
    const btn = h('button', {
      class: 'session-item', type: 'button', 'data-testid': 'session-item',
      'aria-pressed': 'false', title: s.id,
    },
    h('span', { class: 'si-top' }, name, badge),
    h('span', { class: 'si-meta' }, lines, ' · ', errors, ' · ', ago));
    btn.dataset.sessionId = s.id;
    btn.dataset.status = s.status;
    btn.addEventListener('click', () => togglePane(s.id));
    const li = h('li', { class: 'session-li' }, btn);
    s.item = { li, btn, badge, lines, errors, ago, agoText: '', linesText: '', errorsText: '', label: '' };
    renderCounts(s);
    // keep the list sorted by id (natural order)
    let before = null;
    for (const child of listEl.children) {
      if (collator.compare(child.firstChild.dataset.sessionId, s.id) > 0) { before = child; break; }
    }
    listEl.insertBefore(li, before);
    applyFilterTo(li, s.id);
    noSessionsEl.hidden = true;
  }

  // Status (badge, data-status) is rendered on the next frame; counts and
  // "time since last output" at most once a second: a text change in the
  // sidebar or a pane header re-lays out the pane grid, so it is kept rare.
  function renderStatus(s) {
    const it = s.item;
    const label = statusLabel(s.status, s.metadata);
    if (it) {
      const full = label + (s.gone ? ' · ended' : '') + (panes.has(s.id) ? ', pane open' : '');
      if (it.btn.dataset.status !== s.status) it.btn.dataset.status = s.status;
      if (it.label !== full) {
        it.label = full;
        if (it.badge.textContent !== label) it.badge.textContent = label;
        it.badge.dataset.status = s.status;
        it.btn.classList.toggle('gone', s.gone);
        it.btn.setAttribute('aria-label', s.id + ', ' + full);
      }
    }
    const p = panes.get(s.id);
    if (p) p.renderStatus();
  }

  function renderCounts(s) {
    const it = s.item;
    if (it) {
      const lines = plural(s.lines, 'line', 'lines');
      const errors = plural(s.errors, 'error', 'errors');
      const ago = fmtAgo(s.lastOutput);
      if (it.linesText !== lines) { it.linesText = lines; it.lines.textContent = lines; }
      if (it.errorsText !== errors) {
        it.errorsText = errors;
        it.errors.textContent = errors;
        it.errors.classList.toggle('has-errors', s.errors > 0);
      }
      if (it.agoText !== ago) { it.agoText = ago; it.ago.textContent = ago; }
    }
    const p = panes.get(s.id);
    if (p) p.renderMeta();
  }

  function updateSummary() {
    let running = 0;
    for (const s of sessions.values()) if (s.status === 'running') running++;
    const text = sessions.size ? '(' + sessions.size + ', ' + running + ' running)' : '';
    if (summaryEl.textContent !== text) summaryEl.textContent = text;
    if (noSessionsEl.hidden !== sessions.size > 0) noSessionsEl.hidden = sessions.size > 0;
  }

  function applyFilterTo(li, id) {
    const q = filterEl.value.trim().toLowerCase();
    li.hidden = !!q && !id.toLowerCase().includes(q);
  }
  filterEl.addEventListener('input', () => {
    for (const s of sessions.values()) if (s.item) applyFilterTo(s.item.li, s.id);
  });

  $('open-running').addEventListener('click', () => {
    let n = 0;
    for (const s of sessions.values()) {
      if (s.status === 'running' && !panes.has(s.id) && !(s.item && s.item.li.hidden) && panes.size < 16) { openPane(s.id); n++; }
    }
    if (!n) toast('No other running session to open.');
  });
  $('close-all').addEventListener('click', () => {
    for (const id of [...panes.keys()]) closePane(id);
  });

  // ---------------------------------------------------------------- panes
  function openPane(id) {
    if (panes.has(id)) return panes.get(id);
    const s = ensureSession(id);
    const p = new Pane(s, host);
    panes.set(id, p);
    panesEl.append(p.el);
    if (s.item) { s.item.btn.setAttribute('aria-pressed', 'true'); s.item.btn.classList.add('open'); s.item.label = ''; }
    layoutPanes();
    setActivePane(id);
    markDirty(s);
    p.rerender();
    return p;
  }

  function closePane(id) {
    const p = panes.get(id);
    if (!p) return;
    const hadFocus = p.el.contains(document.activeElement);
    p.destroy();
    panes.delete(id);
    const s = sessions.get(id);
    if (s && s.item) { s.item.btn.setAttribute('aria-pressed', 'false'); s.item.btn.classList.remove('open'); s.item.label = ''; markDirty(s); }
    if (maximizedId === id) maximizedId = null;
    if (activePaneId === id) activePaneId = null;
    layoutPanes();
    if (hadFocus && s && s.item) s.item.btn.focus();
  }

  function togglePane(id) {
    if (panes.has(id)) closePane(id);
    else {
      const p = openPane(id);
      if (maximizedId !== null && maximizedId !== id) toggleMaximize(id);
      return p;
    }
    return null;
  }

  function toggleMaximize(id) {
    if (maximizedId === id || id === null) maximizedId = null;
    else if (panes.has(id)) maximizedId = id;
    for (const p of panes.values()) {
      const on = p.id === maximizedId;
      p.el.classList.toggle('maximized', on);
      p.maxBtn.setAttribute('aria-pressed', on ? 'true' : 'false');
      p.maxBtn.setAttribute('aria-label', (on ? 'Leave full screen ' : 'Full screen ') + p.id);
      p.settle = 3;
    }
    panesEl.classList.toggle('has-max', maximizedId !== null);
    document.documentElement.classList.toggle('pane-maximized', maximizedId !== null);
    if (maximizedId !== null) setActivePane(maximizedId);
    scheduleFrame();
  }

  function setActivePane(id) {
    if (activePaneId === id) return;
    const prev = activePaneId !== null ? panes.get(activePaneId) : null;
    if (prev) prev.el.classList.remove('active');
    activePaneId = id;
    const p = panes.get(id);
    if (p) p.el.classList.add('active');
  }

  function activePane() {
    if (maximizedId !== null && panes.has(maximizedId)) return panes.get(maximizedId);
    if (activePaneId !== null && panes.has(activePaneId)) return panes.get(activePaneId);
    const first = panes.values().next();
    return first.done ? null : first.value;
  }

  function layoutPanes() {
    const n = panes.size;
    noPanesEl.hidden = n > 0;
    let cols = n <= 3 ? Math.max(n, 1) : n === 4 ? 2 : n <= 9 ? 3 : 4;
    const room = Math.max(1, Math.floor((window.innerWidth - 300) / 380));
    cols = Math.max(1, Math.min(cols, room));
    const rows = Math.max(1, Math.ceil(n / cols));
    panesEl.style.setProperty('--cols', String(cols));
    panesEl.style.setProperty('--rows', String(rows));
    panesEl.dataset.count = String(n);
    for (const p of panes.values()) p.settle = 3;
    scheduleFrame();
  }
  let resizeTimer = 0;
  window.addEventListener('resize', () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(layoutPanes, 100); });

  // ---------------------------------------------------------------- frame loop
  // DOM work runs at most once per animation frame, and is spaced out when
  // it gets expensive: after a frame whose writes + layout took C ms the next
  // one waits ~2C (capped), so rendering never takes more than about a third
  // of the main thread however fast lines arrive.
  function scheduleFrame() {
    if (rafId || frameTimer) return;
    const wait = nextFrameAt - performance.now();
    if (wait > 4) {
      frameTimer = setTimeout(() => { frameTimer = 0; rafId = requestAnimationFrame(frame); }, wait);
    } else rafId = requestAnimationFrame(frame);
  }

  function frame() {
    rafId = 0;
    const t0 = performance.now();
    const scroll = [];
    for (const p of panes.values()) if (p.flush()) scroll.push(p);
    if (dirtySessions.size) {
      for (const s of dirtySessions) renderStatus(s);
      dirtySessions.clear();
      updateSummary();
    }
    // All writes are done; scroll last so layout is computed once.
    for (const p of scroll) {
      const lg = p.logEl;
      if (p.keepOffset != null) {
        lg.scrollTop = lg.scrollHeight - lg.clientHeight - p.keepOffset;
        p.keepOffset = null;
      } else lg.scrollTop = lg.scrollHeight;
    }
    const cost = performance.now() - t0;
    nextFrameAt = t0 + Math.min(MAX_FRAME_GAP_MS, cost * 3);
    stats.frames++;
    stats.frameMs += cost;
    if (cost > stats.frameMaxMs) stats.frameMaxMs = cost;
  }

  /** Signed out: every pane and list item goes. */
  function reset() {
    for (const p of [...panes.values()]) p.destroy();
    panes.clear();
    dirtySessions.clear();
    listEl.replaceChildren();
    maximizedId = null;
    activePaneId = null;
    layoutPanes();
    updateSummary();
  }

  /** Counts and "time since last output", once a second. */
  function renderAllCounts() {
    for (const s of sessions.values()) renderCounts(s);
  }

  return {
    panes, stats, markDirty, enqueue, scheduleFrame, insertItem, updateSummary, reset, renderAllCounts,
    toggleMaximize, activePane,
    maximized: () => maximizedId,
    focusFilter: () => filterEl.focus(),
  };
}
