// The three tabs (ARIA tabs pattern) and the address's #hash, which names the tab and,
// for #generations/<job id>, the job to follow.

import { refreshAssignments } from './assignments.js';
import { $ } from './dom.js';
import { refreshEngines } from './engines.js';
import { startGenerations, stopGenerations } from './generations.js';
import { say } from './messages.js';
import { state, UUID_RE } from './state.js';
import { openJob } from './timeline.js';

export const TAB_NAMES = ['engines', 'assignments', 'generations'];

export function selectTab(name, focus = true) {
  const changed = state.tab !== name;
  state.tab = name;
  for (const t of TAB_NAMES) {
    const tab = $(`tab-${t}`);
    const on = t === name;
    tab.setAttribute('aria-selected', String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`panel-${t}`).hidden = !on;
  }
  if (focus) $(`tab-${name}`).focus();
  if (changed) say('');
  history.replaceState(null, '', `#${name}`);
  if (name === 'generations') startGenerations(); else stopGenerations();
  if (name === 'engines') refreshEngines();
  if (name === 'assignments') refreshAssignments();
}

export function onTabKey(event) {
  const i = TAB_NAMES.indexOf(state.tab);
  let next = null;
  if (event.key === 'ArrowRight') next = TAB_NAMES[(i + 1) % TAB_NAMES.length];
  else if (event.key === 'ArrowLeft') next = TAB_NAMES[(i + TAB_NAMES.length - 1) % TAB_NAMES.length];
  else if (event.key === 'Home') next = TAB_NAMES[0];
  else if (event.key === 'End') next = TAB_NAMES[TAB_NAMES.length - 1];
  if (next) {
    event.preventDefault();
    selectTab(next, true);
  }
}

/** `#engines`, `#assignments`, `#generations`, or `#generations/<job id>` to follow a job. */
export function followHash(always = false) {
  if (!state.token) return;
  const [name, id] = (location.hash || '').replace(/^#/, '').split('/');
  const tab = TAB_NAMES.includes(name) ? name : 'engines';
  if (always || tab !== state.tab) selectTab(tab, false);
  if (tab === 'generations' && id && UUID_RE.test(id) && state.job?.id !== id) openJob(id);
}
