/* pcclog viewer: what the page keeps in Web Storage (each access may throw
 * when storage is disabled; a failure reads as "nothing stored"). */

const TOKEN_KEY = 'pcclog.token';         // sessionStorage: this tab only
const THEME_KEY = 'pcclog.theme';         // localStorage
const WS_OVERRIDE_KEY = 'pcclogWsUrl';    // localStorage, debugging only

function storageGet(store, key) {
  try { return store.getItem(key); } catch { return null; }
}
function storageSet(store, key, value) {
  try { store.setItem(key, value); } catch { /* storage disabled */ }
}
function storageDel(store, key) {
  try { store.removeItem(key); } catch { /* storage disabled */ }
}

export const getToken = () => storageGet(sessionStorage, TOKEN_KEY);
export const setToken = (t) => storageSet(sessionStorage, TOKEN_KEY, t);
export const clearToken = () => storageDel(sessionStorage, TOKEN_KEY);

export const getTheme = () => storageGet(localStorage, THEME_KEY);
export const setTheme = (t) => storageSet(localStorage, THEME_KEY, t);

/** A WebSocket URL set by hand in localStorage (never taken from the page URL). */
export const getWsOverride = () => storageGet(localStorage, WS_OVERRIDE_KEY);
