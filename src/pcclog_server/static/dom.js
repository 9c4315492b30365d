/* pcclog viewer: small DOM helpers, toasts, clipboard and download.
 * Log text only ever goes through textContent / text nodes. */

import { entryLine, statusLabel } from './format.js';
import { BUFFER_MAX } from './protocol.js';

export const $ = (id) => document.getElementById(id);

/** An element: `props` are attributes, except `class`, `text` (textContent)
 *  and `on…` (listeners); `kids` are appended. */
export function h(tag, props, ...kids) {
  const el = document.createElement(tag);
  if (props) {
    for (const k of Object.keys(props)) {
      const v = props[k];
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of kids) if (c != null) el.append(c);
  return el;
}

// ---------------------------------------------------------------- toasts
const toastByText = new Map();

/** A short message in the corner; the same text again counts up instead. */
export function toast(text, kind) {
  const toastsEl = $('toasts');
  const prev = toastByText.get(text);
  if (prev) {
    prev.count++;
    prev.el.firstChild.textContent = text + ' (×' + prev.count + ')';
    clearTimeout(prev.timer);
    prev.timer = setTimeout(() => dropToast(text), 6000);
    return;
  }
  const el = h('div', { class: 'toast toast-' + (kind || 'info'), 'data-testid': 'toast', role: kind === 'error' ? 'alert' : null },
    h('span', { text }),
    h('button', { class: 'toast-close', type: 'button', 'aria-label': 'Dismiss', onclick: () => dropToast(text) }));
  toastsEl.append(el);
  const rec = { el, count: 1, timer: setTimeout(() => dropToast(text), 6000) };
  toastByText.set(text, rec);
  while (toastsEl.childElementCount > 4) {
    const first = toastsEl.firstElementChild;
    for (const [k, v] of toastByText) if (v.el === first) { clearTimeout(v.timer); toastByText.delete(k); }
    first.remove();
  }
}

function dropToast(text) {
  const rec = toastByText.get(text);
  if (!rec) return;
  clearTimeout(rec.timer);
  rec.el.remove();
  toastByText.delete(text);
}

// ---------------------------------------------------------------- clipboard / download
export async function copyText(text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch { /* fall back below */ }
  const active = document.activeElement;
  const ta = h('textarea', { class: 'offscreen', readonly: true, 'aria-hidden': 'true' });
  ta.value = text;
  document.body.append(ta);
  ta.select();
  let ok = false;
  try { ok = document.execCommand('copy'); } catch { ok = false; }
  ta.remove();
  if (active && typeof active.focus === 'function') active.focus({ preventScroll: true });
  return ok;
}

/** Saves a session's buffered entries as a text file. */
export function downloadSession(s) {
  const head = '# pcclog session ' + s.id + ' - ' + statusLabel(s.status, s.metadata) +
    ' - ' + s.entries.length + ' buffered entries (at most ' + BUFFER_MAX + '), saved ' +
    new Date().toISOString();
  const lines = [head];
  for (const e of s.entries) lines.push(entryLine(e));
  const blob = new Blob([lines.join('\n') + '\n'], { type: 'text/plain;charset=utf-8' });
  const url = URL.createObjectURL(blob);
  const safe = s.id.replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 80) || 'session';
  const stamp = new Date().toISOString().replace(/[:]/g, '').replace(/\..*$/, '');
  const a = h('a', { href: url, download: safe + '-' + stamp + '.log', class: 'offscreen' });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000);
}
