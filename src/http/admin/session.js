// Signing in and out. The page holds no privilege: it keeps the pasted access token in
// this tab's session storage and sends it with every /v1 call.

import { refusal } from './api.js';
import { resetCheck } from './deploy.js';
import { $, h } from './dom.js';
import { stopGenerations } from './generations.js';
import { clearError, say, showError } from './messages.js';
import { state, TOKEN_KEY } from './state.js';
import { followHash } from './tabs.js';
import { stopJob } from './timeline.js';

/** The token's claims (unverified: the service verifies; the page only shows them). */
export function decodeJwt(token) {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const bin = atob(b64.padEnd(Math.ceil(b64.length / 4) * 4, '='));
    const json = new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0)));
    const claims = JSON.parse(json);
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

export function signIn(raw) {
  const token = String(raw || '').trim().replace(/^bearer\s+/i, '');
  const claims = decodeJwt(token);
  if (!claims) {
    showError('Sign-in', refusal('invalid_token',
      'that does not look like an access token (a JWT is three base64url parts separated by dots)'));
    return false;
  }
  if (typeof claims.exp === 'number' && claims.exp * 1000 < Date.now()) {
    showError('Sign-in', refusal('invalid_token', `this token expired at ${new Date(claims.exp * 1000).toLocaleString()}`, 401));
    return false;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  state.token = token;
  state.claims = claims;
  clearError();
  enterApp();
  return true;
}

export function signOut() {
  stopJob();
  stopGenerations();
  sessionStorage.removeItem(TOKEN_KEY);
  Object.assign(state, { token: null, claims: null, engines: [], assignments: [], jobs: [], bulk: null });
  state.summaries.clear();
  for (const id of ['engines-table', 'assignments-table', 'gen-table', 'mine-table']) {
    $(id).querySelector('tbody').replaceChildren();
  }
  $('mine-table').hidden = true;
  $('mine-empty').hidden = true;
  $('bulk-preview-area').hidden = true;
  resetCheck();
  $('flow-input').value = '';
  $('flow-file').value = '';
  $('bulk-users').value = '';
  $('app').hidden = true;
  $('who').hidden = true;
  $('signin').hidden = false;
  $('token-input').value = '';
  say('Signed out.');
  loadDevUsers();
  $('token-input').focus();
}

/** The page after a reload: the tab's saved token, or the sign-in form. */
export function resumeSession() {
  const saved = sessionStorage.getItem(TOKEN_KEY);
  const claims = saved ? decodeJwt(saved) : null;
  if (claims) {
    state.token = saved;
    state.claims = claims;
    enterApp();
  } else {
    $('signin').hidden = false;
    loadDevUsers();
  }
}

export function whoText() {
  const c = state.claims || {};
  return c.email || c.sub || 'unknown user';
}

function enterApp() {
  $('signin').hidden = true;
  $('app').hidden = false;
  $('who').hidden = false;
  $('who-name').textContent = whoText();
  $('who-name').title = state.claims?.sub ?? '';
  const exp = state.claims?.exp;
  $('who-expiry').textContent = typeof exp === 'number' ? `token valid until ${new Date(exp * 1000).toLocaleTimeString()}` : '';
  $('mine-user').textContent = whoText();
  followHash(true);
  say(`Signed in as ${whoText()}.`);
}

/** The local demo stack's seeded users (a 404 anywhere else). Not /v1: no token, so
 * a plain fetch rather than the API client. */
async function loadDevUsers() {
  const section = $('dev-users');
  section.hidden = true;
  let users;
  try {
    const resp = await fetch('/admin/dev-users', { headers: { Accept: 'application/json' } });
    if (!resp.ok) return;
    users = await resp.json();
  } catch {
    return;
  }
  if (!Array.isArray(users) || users.length === 0) return;
  $('dev-users-list').replaceChildren(...users.map((u) => h('li', {},
    h('button', {
      type: 'button', class: 'secondary', title: u.user_id,
      onclick: () => signIn(u.token),
    }, `Sign in as ${u.label}`))));
  section.hidden = false;
}
