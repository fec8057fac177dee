// What the page tells the person: errors in the assertive live region (with advice in
// plain words), progress notes in the polite one.

import { $, h } from './dom.js';

/** Plain-words advice by HTTP status, shown after the API's own message. */
function advice(err) {
  switch (err.status) {
    case 0: return 'Check that the bookengine service is running and reachable.';
    case 401: return 'Your token was not accepted: sign out and sign in again with a valid, unexpired token.';
    case 403: return "The signed-in user is not allowed to do this: admin actions need an admin's token.";
    case 404: return 'It may have been deleted, or this token cannot see it.';
    case 409: return 'Someone else changed it meanwhile: refresh and try again.';
    case 413: return 'The request is too large.';
    case 429: return 'Too many requests: wait a moment and try again.';
    default: return err.status >= 500 ? 'The service or its database had a problem: try again, and tell an operator if it persists.' : '';
  }
}

export function sentence(text) {
  const t = String(text || 'something went wrong').trim();
  return t.charAt(0).toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? '' : '.');
}

/** Show an error in the assertive live region: what failed, the API's message, advice and code. */
export function showError(action, err) {
  const box = $('error');
  const code = err.code || 'error';
  const key = `${action}|${code}|${err.message}`;
  if (box.dataset.key === key && box.childElementCount) return; // don't re-announce a repeating failure
  box.dataset.key = key;
  box.dataset.code = code;
  say('');
  box.replaceChildren(
    h('div', { class: 'text' },
      h('strong', {}, `${action} failed. `),
      sentence(err.message), ' ',
      advice(err), ' ',
      h('span', { class: 'muted' }, 'Error code: '), h('span', { class: 'code' }, code)),
    h('button', { type: 'button', class: 'secondary small', onclick: clearError }, 'Dismiss'),
  );
}

export function clearError() {
  const box = $('error');
  box.replaceChildren();
  delete box.dataset.key;
  delete box.dataset.code;
}

let sayTimer = null;

/** A success or progress note in the polite live region; it fades after a while. */
export function say(text) {
  clearTimeout(sayTimer);
  $('status').textContent = text;
  if (text) sayTimer = setTimeout(() => { $('status').textContent = ''; }, 12_000);
}

/** A modal <dialog>; resolves true when confirmed, false on Cancel or Escape. */
export function confirmDialog({ title, text, ok = 'Delete', cancel = 'Cancel' }) {
  const dialog = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = ok;
  $('confirm-cancel').textContent = cancel;
  const opener = document.activeElement;
  return new Promise((resolve) => {
    let settled = false;
    const finish = (value) => {
      if (settled) return;
      settled = true;
      $('confirm-ok').removeEventListener('click', onOk);
      $('confirm-cancel').removeEventListener('click', onCancel);
      dialog.removeEventListener('close', onCancel);
      if (dialog.open) dialog.close();
      if (opener && opener.isConnected) opener.focus();
      resolve(value);
    };
    const onOk = () => finish(true);
    const onCancel = () => finish(false);
    $('confirm-ok').addEventListener('click', onOk);
    $('confirm-cancel').addEventListener('click', onCancel);
    dialog.addEventListener('close', onCancel); // Escape
    dialog.showModal();
    $('confirm-cancel').focus();
  });
}
