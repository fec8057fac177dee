// bookengine SuperAdmin page: the entry module (index.html loads it as
// <script type="module">). It wires the page's controls to the modules that own them.
//
// Plain browser modules, no build step. The page calls only this service's /v1 API
// (through api.js) with the access token pasted at sign-in, so Row Level Security
// decides what it shows and what it may change: the page itself holds no privilege.
//
// The modules import each other in cycles (tabs -> timeline -> generations -> ...);
// that is safe because they only export functions and nothing runs until init() below,
// after every module has been evaluated.

import { addAssignment, loadMine, onAddKind, refreshAssignments, renderAssignments } from './assignments.js';
import { invalidateBulk, previewBulk, submitBulk } from './bulk.js';
import { deployFlow, loadFlowFile } from './deploy.js';
import { $ } from './dom.js';
import { refreshEngines } from './engines.js';
import { refreshGenerations, startGenerations, stopGenerations } from './generations.js';
import { resumeSession, signIn, signOut } from './session.js';
import { state } from './state.js';
import { followHash, onTabKey, selectTab, TAB_NAMES } from './tabs.js';
import { cancelJob, closeJob } from './timeline.js';
import { closeVersions, showDiff } from './versions.js';

function init() {
  $('signin-form').addEventListener('submit', (ev) => { ev.preventDefault(); signIn($('token-input').value); });
  $('sign-out').addEventListener('click', signOut);
  $('tabs').addEventListener('keydown', onTabKey);
  for (const t of TAB_NAMES) $(`tab-${t}`).addEventListener('click', () => selectTab(t, false));

  $('engines-refresh').addEventListener('click', refreshEngines);
  $('deploy-form').addEventListener('submit', deployFlow);
  $('flow-file').addEventListener('change', loadFlowFile);
  $('flow-input').addEventListener('input', () => $('flow-input').removeAttribute('aria-invalid'));
  $('versions-close').addEventListener('click', closeVersions);
  $('diff-form').addEventListener('submit', showDiff);

  $('assignments-refresh').addEventListener('click', refreshAssignments);
  $('assign-filter').addEventListener('change', renderAssignments);
  $('add-kind').addEventListener('change', onAddKind);
  $('add-form').addEventListener('submit', addAssignment);
  $('bulk-preview').addEventListener('click', previewBulk);
  $('bulk-form').addEventListener('submit', submitBulk);
  $('bulk-form').addEventListener('input', invalidateBulk);
  $('bulk-form').addEventListener('change', invalidateBulk);
  $('mine-load').addEventListener('click', loadMine);

  $('gen-status').addEventListener('change', refreshGenerations);
  $('gen-limit').addEventListener('change', refreshGenerations);
  $('gen-live').addEventListener('change', () => ($('gen-live').checked ? startGenerations() : stopGenerations()));
  $('job-close').addEventListener('click', closeJob);
  $('job-cancel').addEventListener('click', cancelJob);
  $('job').addEventListener('keydown', (ev) => { if (ev.key === 'Escape') closeJob(); });
  window.addEventListener('hashchange', () => followHash());
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && state.tab === 'generations' && state.token && $('gen-live').checked && !state.genTimer) startGenerations();
  });

  resumeSession();
}

init();
