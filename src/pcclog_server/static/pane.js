/* pcclog viewer: one log pane (a session's lines, its tools, its rendering).
 *
 * Every incoming entry goes to its session's bounded buffer (protocol.js)
 * and, if the session has an open pane, to that pane's queue. Once per
 * animation frame each pane appends its queue as one DocumentFragment and
 * trims to ROWS_MAX rows; the caller scrolls after all DOM writes. Rows live
 * in chunks of CHUNK rows with `content-visibility: auto`. Log text only
 * ever goes through textContent / text nodes.
 *
 * A pane talks to the rest of the page through `host`:
 *   levels                 the level table (levels.js)
 *   scheduleFrame()        ask for a frame
 *   closePane(id), toggleMaximize(id), setActivePane(id)
 *   maximized()            the id of the full-screen pane, or null
 */

import { copyText, downloadSession, h, toast } from './dom.js';
import { GAP_HELP, dataString, entryLine, fmtAgo, fmtTime, gapText, plural, statusLabel } from './format.js';
import { BUFFER_MAX } from './protocol.js';

const ROWS_MAX = 1000;            // DOM rows per following pane
const PAUSED_ROWS_MAX = 2000;     // a paused pane keeps appending up to this, then freezes
const MSG_DISPLAY_MAX = 8000;     // characters of a message shown in a row (copy/download keep all)
const DATA_DISPLAY_MAX = 2000;
const CHUNK = 50;                 // rows per content-visibility chunk
const FOLLOW_BATCH_MAX = 150;     // rows drawn per pane per frame while following
const MAX_MARKS = 200;

let paneSeq = 0;

export class Pane {
  constructor(s, host) {
    this.host = host;
    this.session = s;
    this.id = s.id;
    this.uid = 'p' + (++paneSeq);
    this.rows = 0;
    this.pending = [];
    this.full = true;
    this.frozen = false;
    this.sparse = false;      // some pending lines were skipped while following (overload)
    this.keepOffset = null;   // after a re-render, keep this distance from the end
    this.settle = 0;          // frames left to re-scroll to the end after a re-render
    this.follow = true;
    this.needScroll = true;
    this.newWhilePaused = 0;
    this.minLevel = 0;
    this.re = null;        // test regex (no g flag)
    this.reG = null;       // highlight regex (g flag)
    this.intentAt = 0;
    this.headerText = '';
    this.followText = '';
    this.build();
  }

  build() {
    const s = this.session;
    this.badge = h('span', { class: 'badge', 'data-testid': 'status-badge' });
    this.meta = h('span', { class: 'pane-meta', 'data-testid': 'pane-meta' });
    this.maxBtn = h('button', {
      class: 'btn btn-icon', type: 'button', 'data-testid': 'maximize', 'aria-pressed': 'false',
      'aria-label': 'Full screen ' + s.id, title: 'Full screen (m) / back to grid (Esc)',
    });
    this.maxBtn.addEventListener('click', () => this.host.toggleMaximize(this.id));
    const closeBtn = h('button', {
      class: 'btn btn-icon btn-close', type: 'button', 'data-testid': 'close-pane',
      'aria-label': 'Close pane ' + s.id, title: 'Close pane',
    });
    closeBtn.addEventListener('click', () => this.host.closePane(this.id));

    this.levelSel = h('select', { class: 'input', 'data-testid': 'level-filter', 'aria-label': 'Minimum level for ' + s.id, title: 'Minimum level' });
    // The lowest level of the served order means "all levels".
    const levels = this.host.levels;
    levels.names.forEach((l, i) => this.levelSel.append(h('option', { value: l, text: i === 0 ? 'all levels' : l + '+' })));
    this.levelSel.addEventListener('change', () => {
      this.minLevel = levels.rank[this.levelSel.value] || 0;
      this.rerender();
    });

    this.searchEl = h('input', {
      class: 'input search', type: 'search', 'data-testid': 'search', placeholder: 'Search… (/)',
      'aria-label': 'Search the log of ' + s.id, spellcheck: 'false', autocomplete: 'off',
      title: 'Shows matching lines only. Case-insensitive unless the query has a capital letter.',
      'aria-describedby': this.uid + '-searcherr',
    });
    this.regexBox = h('input', { type: 'checkbox', 'data-testid': 'regex-toggle', 'aria-label': 'Regular expression' });
    this.searchErr = h('span', { class: 'search-error', id: this.uid + '-searcherr', 'data-testid': 'search-error', role: 'status' });
    let debounce = 0;
    const onSearch = () => { clearTimeout(debounce); debounce = setTimeout(() => this.applySearch(), 120); };
    this.searchEl.addEventListener('input', onSearch);
    this.regexBox.addEventListener('change', () => this.applySearch());
    this.searchEl.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') { clearTimeout(debounce); this.applySearch(); }
      if (e.key === 'Escape' && this.host.maximized() === null) {
        if (this.searchEl.value) { this.searchEl.value = ''; this.applySearch(); } else this.logEl.focus();
        e.stopPropagation();
      }
    });

    this.followBtn = h('button', {
      class: 'btn btn-follow', type: 'button', 'data-testid': 'follow', 'aria-pressed': 'true',
      title: 'Follow new lines / pause (f)',
    });
    this.followBtn.addEventListener('click', () => this.setFollow(!this.follow));
    const dlBtn = h('button', {
      class: 'btn', type: 'button', 'data-testid': 'download', 'aria-label': 'Download the buffered log of ' + s.id,
      title: 'Download the buffered log (up to ' + BUFFER_MAX + ' entries) as text', text: 'Download',
    });
    dlBtn.addEventListener('click', () => downloadSession(this.session));

    this.logEl = h('div', {
      class: 'log', tabindex: '0', role: 'log', 'aria-live': 'off', 'data-testid': 'log',
      'aria-label': 'Log lines of ' + s.id + ' (arrow keys pick a line, c copies it)',
    });
    this.copyBtn = h('button', { class: 'copy-btn', type: 'button', 'data-testid': 'copy-line', 'aria-label': 'Copy line', title: 'Copy line' });
    this.copyBtn.addEventListener('click', (e) => { e.stopPropagation(); this.copyRow(this.copyBtn.parentNode); });

    const title = h('h3', { class: 'pane-title', title: s.id, text: s.id });
    this.el = h('section', { class: 'pane', 'data-testid': 'pane', 'aria-label': 'Logs of ' + s.id },
      h('header', { class: 'pane-head' }, title, this.badge, this.meta, h('span', { class: 'spacer' }), this.maxBtn, closeBtn),
      h('div', { class: 'pane-tools', role: 'toolbar', 'aria-label': 'Tools for ' + s.id },
        this.levelSel,
        h('span', { class: 'search-wrap' }, this.searchEl,
          h('label', { class: 'regex-label', title: 'Regular expression' }, this.regexBox, h('span', { 'aria-hidden': 'true', text: '.*' }))),
        this.followBtn, dlBtn, this.searchErr),
      // The log is absolutely positioned inside a wrapper that takes the
      // pane's remaining height: appending rows then never re-lays out the
      // pane, the grid or the other panes (the wrapper is a layout boundary).
      h('div', { class: 'log-wrap' }, this.logEl));
    this.el.dataset.sessionId = s.id;
    this.el.dataset.following = 'true';

    const lg = this.logEl;
    const intent = () => { this.intentAt = performance.now(); };
    lg.addEventListener('wheel', intent, { passive: true });
    lg.addEventListener('touchmove', intent, { passive: true });
    lg.addEventListener('pointerdown', intent);
    lg.addEventListener('pointermove', (e) => { if (e.buttons) intent(); });
    lg.addEventListener('keydown', (e) => { intent(); this.onLogKey(e); });
    lg.addEventListener('scroll', () => this.onScroll(), { passive: true });
    lg.addEventListener('mouseover', (e) => {
      const row = e.target.closest && e.target.closest('.row-log');
      if (row && lg.contains(row) && this.copyBtn.parentNode !== row) row.append(this.copyBtn);
    });
    lg.addEventListener('focusin', (e) => {
      const row = e.target;
      if (row.classList && row.classList.contains('row-log') && this.copyBtn.parentNode !== row) row.append(this.copyBtn);
    });
    this.el.addEventListener('focusin', () => this.host.setActivePane(this.id));
    this.el.addEventListener('pointerdown', () => this.host.setActivePane(this.id));
    this.renderHeader();
  }

  destroy() { this.el.remove(); }

  renderStatus() {
    const s = this.session;
    const label = statusLabel(s.status, s.metadata);
    if (this.badge.dataset.status !== s.status || this.badge.textContent !== label) {
      this.badge.textContent = label;
      this.badge.dataset.status = s.status;
      this.el.dataset.status = s.status;
    }
  }

  renderMeta() {
    const s = this.session;
    const text = plural(s.lines, 'line', 'lines') + ' · ' + plural(s.errors, 'error', 'errors') + ' · ' + fmtAgo(s.lastOutput);
    if (text !== this.headerText) { this.headerText = text; this.meta.textContent = text; }
    this.renderFollow();
  }

  renderFollow() {
    const ft = this.follow ? 'Following' : 'Paused' + (this.newWhilePaused ? ' · ' + this.newWhilePaused + ' new' : '');
    if (ft !== this.followText) { this.followText = ft; this.followBtn.textContent = ft; }
  }

  renderHeader() {
    this.renderStatus();
    this.renderMeta();
  }

  applySearch() {
    const q = this.searchEl.value;
    const isRe = this.regexBox.checked;
    this.re = this.reG = null;
    this.searchEl.classList.remove('invalid');
    this.searchEl.removeAttribute('aria-invalid');
    this.searchErr.textContent = '';
    if (q) {
      const flags = /[A-Z]/.test(q) ? '' : 'i';   // smart case
      const src = isRe ? q : q.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
      try {
        this.re = new RegExp(src, flags);
        this.reG = new RegExp(src, flags + 'g');
      } catch (err) {
        this.re = this.reG = null;
        this.searchEl.classList.add('invalid');
        this.searchEl.setAttribute('aria-invalid', 'true');
        this.searchErr.textContent = 'Invalid regex: ' + String((err && err.message) || err).replace(/^Invalid regular expression: /, '');
      }
    }
    this.el.classList.toggle('searching', !!this.re);
    this.rerender();
  }

  matches(e) {
    if (e.kind !== 'log') return true;
    if (e._lv < this.minLevel) return false;
    if (this.re) {
      if (this.re.test(e.message)) return true;
      const ds = dataString(e);
      return ds ? this.re.test(ds) : false;
    }
    return true;
  }

  enqueue(e) {
    if (!this.follow && e.kind === 'log') this.newWhilePaused++;
    if (this.full || this.frozen) return;
    this.pending.push(e);
    if (this.pending.length > PAUSED_ROWS_MAX) {
      // The page was hidden (no frames): drop the queue, re-render from the buffer.
      this.pending.length = 0;
      if (this.follow) this.full = true; else this.frozen = true;
    }
    this.host.scheduleFrame();
  }

  rerender() {
    this.full = true;
    this.needScroll = true;
    this.host.scheduleFrame();
  }

  /** Writes this pane's DOM for the frame; returns true if it must scroll to the end.
   *  Rows live in chunks of CHUNK rows with `content-visibility: auto`, so a
   *  layout only walks the chunks on screen, not every row of the pane. */
  flush() {
    const lg = this.logEl;
    if (this.full) {
      this.full = false;
      this.frozen = false;
      this.pending.length = 0;
      const ents = this.session.entries;
      const pick = [];
      for (let i = ents.length - 1; i >= 0 && pick.length < ROWS_MAX; i--) {
        if (this.matches(ents[i])) pick.push(ents[i]);
      }
      const frag = document.createDocumentFragment();
      let chunk = null;
      for (let i = pick.length - 1; i >= 0; i--) {
        if (!chunk || chunk._n >= CHUNK) { chunk = newChunk(); frag.append(chunk); }
        chunk.append(this.renderRow(pick[i]));
        chunk._n++;
      }
      lg.replaceChildren(frag);
      this.rows = pick.length;
      this.sparse = false;
      // Off-screen chunks start with an estimated height; once the end is
      // drawn the real heights replace it, so scroll to the end again for
      // a few frames.
      this.settle = 3;
      lg.dataset.empty = this.re || this.minLevel ? 'No matching lines.' : 'No log lines yet.';
      this.needScroll = false;
      return true;
    }
    let scroll = (this.needScroll || this.settle > 0) && this.follow;
    this.needScroll = false;
    if (this.settle > 0) { this.settle--; this.host.scheduleFrame(); }
    const pend = this.pending;
    if (!pend.length || this.frozen) { pend.length = 0; return scroll; }
    this.pending = [];
    let start = 0;
    if (this.follow && pend.length > FOLLOW_BATCH_MAX) {
      // Overload valve: lines arrive faster than frames; while following
      // only the newest are drawn. Pausing re-renders the buffer in full.
      start = pend.length - FOLLOW_BATCH_MAX;
      for (let i = 0; i < start && !this.sparse; i++) if (this.matches(pend[i])) this.sparse = true;
    }
    let chunk = lg.lastElementChild;
    let chunkFrag = null;          // rows for the chunk already in the DOM
    let newChunks = null;          // chunks created this frame
    let added = 0;
    for (let i = start; i < pend.length; i++) {
      const e = pend[i];
      if (!this.matches(e)) continue;
      if (!this.follow && this.rows + added >= PAUSED_ROWS_MAX) { this.frozen = true; break; }
      if (!chunk || chunk._n >= CHUNK) {
        chunk = newChunk();
        if (!newChunks) newChunks = document.createDocumentFragment();
        newChunks.append(chunk);
      }
      const row = this.renderRow(e);
      if (chunk.isConnected) {
        if (!chunkFrag) chunkFrag = document.createDocumentFragment();
        chunkFrag.append(row);
      } else chunk.append(row);
      chunk._n++;
      added++;
    }
    if (chunkFrag) lg.lastElementChild.append(chunkFrag);
    if (newChunks) lg.append(newChunks);
    if (added) {
      this.rows += added;
      if (this.follow) scroll = true;
    }
    if (this.follow && this.rows > ROWS_MAX) {
      let excess = this.rows - ROWS_MAX;
      this.rows = ROWS_MAX;
      while (excess > 0) {
        const first = lg.firstElementChild;
        if (!first) break;
        if (first._n <= excess) {
          excess -= first._n;
          first.remove();
        } else {
          const r = document.createRange();
          r.setStart(first, 0);
          r.setEnd(first, excess);
          r.deleteContents();
          first._n -= excess;
          excess = 0;
        }
      }
    }
    return scroll;
  }

  renderRow(e) {
    if (e.kind === 'note') {
      const row = document.createElement('div');
      row.className = 'row row-gap row-note';
      row.setAttribute('data-testid', 'note-row');
      row.setAttribute('role', 'separator');
      row.textContent = e.text;
      return row;
    }
    if (e.kind === 'gap') {
      const row = document.createElement('div');
      row.className = 'row row-gap';
      row.setAttribute('data-testid', 'gap-row');
      row.setAttribute('role', 'separator');
      row.dataset.fromSeq = e.fromSeq;
      row.dataset.toSeq = e.toSeq;
      row.dataset.count = e.count;
      row.dataset.reason = e.reason;
      row.textContent = gapText(e);
      row.title = GAP_HELP[e.reason] || '';
      e._el = row;
      return row;
    }
    if (e.kind === 'status') {
      const row = document.createElement('div');
      row.className = 'row row-status';
      row.setAttribute('data-testid', 'status-row');
      row.dataset.seq = e.seq;
      row.dataset.status = e.status;
      const ts = document.createElement('span');
      ts.className = 'ts';
      ts.textContent = fmtTime(e.timestamp);
      const lv = document.createElement('span');
      lv.className = 'lv';
      lv.textContent = 'STATE';
      const body = document.createElement('span');
      body.className = 'body';
      body.textContent = 'status → ' + statusLabel(e.status, e.metadata);
      row.append(ts, ' ', lv, ' ', body);
      return row;
    }
    const row = document.createElement('div');
    row.className = 'row row-log lv-' + (e.level in this.host.levels.rank ? e.level : 'other');
    row.setAttribute('data-testid', 'log-row');
    if (e.seq != null) row.dataset.seq = e.seq;
    row.dataset.level = e.level;
    row.tabIndex = -1;
    row._entry = e;
    const ts = document.createElement('span');
    ts.className = 'ts';
    ts.textContent = fmtTime(e.timestamp);
    const lv = document.createElement('span');
    lv.className = 'lv';
    lv.textContent = e.level.toUpperCase().slice(0, 5).padEnd(5);
    const body = document.createElement('span');
    body.className = 'body';
    const msg = e.message.length > MSG_DISPLAY_MAX ? e.message.slice(0, MSG_DISPLAY_MAX) + ' …[' + (e.message.length - MSG_DISPLAY_MAX) + ' more chars]' : e.message;
    appendMarked(body, msg, this.reG);
    const ds = dataString(e);
    if (ds) {
      const d = document.createElement('span');
      d.className = 'data';
      appendMarked(d, ds.length > DATA_DISPLAY_MAX ? ds.slice(0, DATA_DISPLAY_MAX) + ' …' : ds, this.reG);
      body.append(' ', d);
    }
    row.append(ts, ' ', lv, ' ', body);
    return row;
  }

  setFollow(on) {
    if (this.follow === on) return;
    this.follow = on;
    if (!on && this.sparse) {
      // Some lines were skipped while following fast: draw the whole
      // buffer, keeping the reader's distance from the end.
      const lg = this.logEl;
      this.keepOffset = Math.max(0, lg.scrollHeight - lg.scrollTop - lg.clientHeight);
      this.full = true;
      this.host.scheduleFrame();
    }
    this.followBtn.setAttribute('aria-pressed', on ? 'true' : 'false');
    this.el.dataset.following = on ? 'true' : 'false';
    this.followBtn.classList.toggle('paused', !on);
    if (on) {
      this.newWhilePaused = 0;
      this.rerender();
    }
    this.renderHeader();
  }

  onScroll() {
    if (performance.now() - this.intentAt > 1000) return;   // our own scroll-to-end
    const lg = this.logEl;
    const atEnd = lg.scrollHeight - lg.scrollTop - lg.clientHeight < 8;
    if (this.follow && !atEnd) this.setFollow(false);
    else if (!this.follow && atEnd && !this.frozen) this.setFollow(true);
  }

  onLogKey(e) {
    const lg = this.logEl;
    const row = e.target !== lg && e.target.closest ? e.target.closest('.row') : null;
    if (e.key === 'ArrowUp' || e.key === 'ArrowDown') {
      e.preventDefault();
      const up = e.key === 'ArrowUp';
      let next = row ? siblingRow(row, up) : (lg.lastElementChild && lg.lastElementChild.lastElementChild);
      while (next && !next.classList.contains('row-log')) next = siblingRow(next, up);
      if (next) {
        if (this.follow) this.setFollow(false);
        next.focus();
      }
    } else if (row && row.classList.contains('row-log') && (e.key === 'c' || e.key === 'Enter') && !e.ctrlKey && !e.metaKey && !e.altKey) {
      e.preventDefault();
      e.stopPropagation();
      this.copyRow(row);
    } else if (e.key === 'PageUp' || e.key === 'Home') {
      if (this.follow) this.setFollow(false);
    }
  }

  async copyRow(row) {
    if (!row || !row._entry) return;
    const ok = await copyText(entryLine(row._entry));
    this.copyBtn.classList.toggle('copied', ok);
    toast(ok ? 'Line copied.' : 'Copy failed: the browser refused clipboard access.', ok ? 'info' : 'error');
    setTimeout(() => this.copyBtn.classList.remove('copied'), 1200);
  }
}

/** A gap row whose entry got its real reason (the row is drawn already). */
export function renameGapRow(e) {
  if (e._el) { e._el.textContent = gapText(e); e._el.title = GAP_HELP[e.reason] || ''; }
}

function newChunk() {
  const c = document.createElement('div');
  c.className = 'chunk';
  c._n = 0;
  return c;
}

// Row navigation across chunks.
function siblingRow(row, up) {
  let el = up ? row.previousElementSibling : row.nextElementSibling;
  if (!el) {
    const chunk = row.parentNode;
    const other = chunk && (up ? chunk.previousElementSibling : chunk.nextElementSibling);
    el = other ? (up ? other.lastElementChild : other.firstElementChild) : null;
  }
  while (el && !(el.classList && el.classList.contains('row'))) {
    el = up ? el.previousElementSibling : el.nextElementSibling;
  }
  return el;
}

function appendMarked(parent, text, reG) {
  if (!reG || !text) { parent.textContent = text; return; }
  reG.lastIndex = 0;
  let last = 0;
  let n = 0;
  let m;
  while ((m = reG.exec(text)) !== null) {
    const i = m.index;
    const j = i + m[0].length;
    if (j === i) { reG.lastIndex = i + 1; continue; }   // empty match: step on
    if (i > last) parent.append(text.slice(last, i));
    const mark = document.createElement('mark');
    mark.textContent = m[0];
    parent.append(mark);
    last = j;
    if (++n >= MAX_MARKS) break;
  }
  if (last < text.length) parent.append(text.slice(last));
}
