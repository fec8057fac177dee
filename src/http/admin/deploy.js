// Deploying a flow document (Engines tab): the service checks it, and its issues are
// shown next to the step they are about.

import { client, refusal } from './api.js';
import { $, badge, h } from './dom.js';
import { refreshEngines } from './engines.js';
import { clearError, say, sentence, showError } from './messages.js';

export function resetCheck() {
  $('deploy-summary').textContent = 'Deploy to validate the document.';
  $('deploy-summary').className = 'muted';
  $('readiness').hidden = true;
  $('doc-issues').replaceChildren();
  $('flow-steps').replaceChildren();
  $('flow-input').removeAttribute('aria-invalid');
}

function issueItem(issue) {
  return h('li', { class: 'issue', dataset: { path: issue.path || '', code: issue.code || '' } },
    issue.path ? h('code', {}, issue.path) : null, issue.path ? ': ' : '',
    issue.message || issue.code, ' ', h('span', { class: 'muted' }, `(${issue.code})`));
}

/** Show the check result: readiness, document-level issues, and each step with its own issues. */
function renderCheck(doc, err, engine) {
  resetCheck();
  const issues = Array.isArray(err?.details?.issues) ? err.details.issues : [];
  const steps = Array.isArray(doc?.steps) ? doc.steps.slice(0, 200) : [];
  const byStep = new Map();
  const docIssues = [];
  for (const issue of issues) {
    let idx = -1;
    if (typeof issue.step_id === 'string') idx = steps.findIndex((s) => s && s.id === issue.step_id);
    if (idx < 0) {
      const m = /^steps\[(\d+)\]/.exec(issue.path || '');
      if (m && Number(m[1]) < steps.length) idx = Number(m[1]);
    }
    if (idx >= 0) {
      if (!byStep.has(idx)) byStep.set(idx, []);
      byStep.get(idx).push(issue);
    } else {
      docIssues.push(issue);
    }
  }
  const summary = $('deploy-summary');
  if (err) {
    summary.className = 'issue';
    summary.textContent = `Not deployed: ${sentence(err.message)} (${err.code})`;
    $('flow-input').setAttribute('aria-invalid', 'true');
  } else {
    summary.className = '';
    summary.textContent = `Deployed as engine "${engine.name}" (${engine.id}).`;
  }
  const readiness = err ? err.details?.readiness : 100;
  if (typeof readiness === 'number') {
    $('readiness').hidden = false;
    $('readiness-meter').value = readiness;
    $('readiness-text').textContent = readiness === 100
      ? '100% ready'
      : `${readiness}% ready: every step needs a provider, a model and a prompt`;
  }
  $('doc-issues').replaceChildren(...docIssues.map(issueItem));
  if (err?.details?.truncated) $('doc-issues').append(h('li', { class: 'issue' }, 'More problems were found than are listed here.'));
  // A refusal that is not about the document (permissions, size) has nothing to mark on the steps.
  if (err && issues.length === 0) return;
  $('flow-steps').replaceChildren(...steps.map((step, i) => {
    const own = byStep.get(i) || [];
    const conf = (step && typeof step.configuration === 'object' && step.configuration) || {};
    const id = step && typeof step.id === 'string' ? step.id : `(step ${i + 1})`;
    const model = conf.provider || conf.model ? `${conf.provider || '?'}/${conf.model || '?'}` : null;
    return h('li', { class: own.length ? 'has-issues' : 'ok', dataset: { stepId: id, stepIndex: String(i) } },
      h('div', { class: 'step-head' },
        h('strong', {}, id),
        step?.name && step.name !== id ? h('span', {}, step.name) : null,
        model ? h('span', { class: 'chip' }, model) : null,
        own.length ? badge(`${own.length} problem${own.length > 1 ? 's' : ''}`, 'failed') : badge(err ? 'no problems' : 'ready', 'ok')),
      own.length ? h('ul', { class: 'issues', 'aria-label': `Problems in step ${id}` }, own.map(issueItem)) : null);
  }));
}

export async function deployFlow(event) {
  event.preventDefault();
  clearError();
  const text = $('flow-input').value.trim();
  if (!text) {
    resetCheck();
    showError('Deploy', refusal('invalid_json', 'paste a flow document or choose a JSON file first'));
    $('flow-input').focus();
    return;
  }
  let doc;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    const err = refusal('invalid_json', `the flow document is not valid JSON (${e.message})`);
    renderCheck(null, err);
    showError('Deploy', err);
    return;
  }
  const button = $('deploy-button');
  button.disabled = true;
  try {
    const engine = await client.deployEngine(doc);
    renderCheck(doc, null, engine);
    say(`Engine "${engine.name}" deployed.`);
    await refreshEngines();
  } catch (e) {
    renderCheck(doc, e);
    showError('Deploy', e);
  } finally {
    button.disabled = false;
  }
}

export async function loadFlowFile() {
  const file = $('flow-file').files?.[0];
  if (!file) return;
  try {
    $('flow-input').value = await file.text();
    resetCheck();
    say(`Loaded ${file.name}; press Deploy to check and deploy it.`);
  } catch (e) {
    showError('Reading the file', refusal('unreadable_file', e.message));
  }
}
