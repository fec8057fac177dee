// The SuperAdmin page in headless Chromium, against a running bookengine with a worker.
//
//   BOOKENGINE_URL     the service, e.g. http://127.0.0.1:8787
//   ADMIN_TOKEN        an access token of an admin (profiles.role = 'admin')
//   PRO_TOKEN          an access token of a non-admin user on the pro tier
//   EXAMPLE_FLOW_PATH  examples/book-flow.json
//   SCREENSHOT_DIR     where the screenshots go (created if missing)
//   CHROMIUM_PATH      optional; default /usr/bin/chromium (never downloaded)
//
// tests/api/browser.rs sets all of these up; run it with `cargo test --test api browser`.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const REQUIRED = ['BOOKENGINE_URL', 'ADMIN_TOKEN', 'PRO_TOKEN', 'EXAMPLE_FLOW_PATH', 'SCREENSHOT_DIR'];
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const env = Object.fromEntries(REQUIRED.map((k) => [k, process.env[k]]));
const base = (env.BOOKENGINE_URL || '').replace(/\/+$/, '');
const stamp = `${Date.now().toString(36)}`;
const ENGINE = `Book engine ${stamp}`;
const CHAPTERS = 8;

let browser;
let page;
let example;
const pageErrors = [];
const cspViolations = [];

/** The service's API, outside the browser. */
async function api(token, method, urlPath, body) {
  const resp = await fetch(`${base}${urlPath}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  return { status: resp.status, body: text ? JSON.parse(text) : null };
}

/** A screenshot at 1280x800; `top` scrolls up first, `fullPage` takes the whole page. */
async function shot(name, { top = false, fullPage = false } = {}) {
  if (top) await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: path.join(env.SCREENSHOT_DIR, name), fullPage });
}

async function signIn(token) {
  await page.getByLabel('Access token (JWT)').fill(token);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.locator('#who').waitFor({ state: 'visible' });
}

function flowText(name, mutate = (d) => d) {
  const doc = structuredClone(example);
  doc.name = name;
  return JSON.stringify(mutate(doc), null, 2);
}

const missing = REQUIRED.filter((k) => !process.env[k]);
const problem = missing.length
  ? `missing environment variables: ${missing.join(', ')}. `
    + 'Run this through `cargo test --test api browser` (tests/api/browser.rs), or set them by hand.'
  : !existsSync(CHROMIUM)
    ? `${CHROMIUM} not found: apt-get install chromium (this test never downloads a browser)`
    : null;

// Without its environment the suite cannot start: one failing test says why.
if (problem) test('the browser tests have what they need', () => assert.fail(problem));

describe('SuperAdmin page', { concurrency: false, skip: problem ? 'see the failure above' : false }, () => {
  before(async () => {
    example = JSON.parse(readFileSync(env.EXAMPLE_FLOW_PATH, 'utf8'));
    mkdirSync(env.SCREENSHOT_DIR, { recursive: true });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync'],
    });
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    page = await context.newPage();
    page.setDefaultTimeout(15_000);
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('console', (m) => {
      if (/Content Security Policy/i.test(m.text())) cspViolations.push(m.text());
    });
  });

  after(async () => {
    await browser?.close();
  });

  test('the admin signs in with a pasted token; tabs work from the keyboard', async () => {
    const resp = await page.goto(`${base}/admin`);
    assert.equal(resp.status(), 200);
    assert.match(resp.headers()['content-type'], /^text\/html/);
    await signIn(env.ADMIN_TOKEN);
    const engines = page.getByRole('tab', { name: 'Engines' });
    assert.equal(await engines.getAttribute('aria-selected'), 'true');
    await engines.focus();
    await page.keyboard.press('ArrowRight');
    const assignments = page.getByRole('tab', { name: 'Assignments' });
    assert.equal(await assignments.getAttribute('aria-selected'), 'true');
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'tab-assignments');
    assert.ok(await page.getByRole('tabpanel', { name: 'Assignments' }).isVisible());
    await page.keyboard.press('ArrowLeft');
    assert.equal(await engines.getAttribute('aria-selected'), 'true');
    // Every form control has an accessible name.
    const unlabeled = await page.evaluate(() => [...document.querySelectorAll('input, select, textarea')]
      .filter((el) => !(el.labels?.length || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')))
      .map((el) => el.id || el.name || el.outerHTML.slice(0, 60)));
    assert.deepEqual(unlabeled, []);
  });

  test('deploying shows readiness problems next to the step, then deploys the example', async () => {
    const broken = flowText(`Broken ${stamp}`, (d) => {
      delete d.steps[1].configuration.model;
      return d;
    });
    await page.getByLabel('Flow document (JSON)').fill(broken);
    await page.getByRole('button', { name: 'Deploy', exact: true }).click();
    const chapters = page.locator('#flow-steps li[data-step-id="chapters"]');
    await chapters.locator('.issue').first().waitFor();
    assert.match(await chapters.innerText(), /step "chapters" has no model/);
    assert.match(await chapters.locator('.issue').first().innerText(), /steps\[1\]\.configuration\.model/);
    assert.equal(await page.locator('#flow-steps li[data-step-id="outline"] .issue').count(), 0);
    assert.match(await page.locator('#readiness-text').innerText(), /67%/);
    const alert = page.getByRole('alert');
    assert.match(await alert.innerText(), /Deploy failed/);
    assert.match(await alert.innerText(), /flow_not_ready/);
    assert.equal(await page.getByLabel('Flow document (JSON)').getAttribute('aria-invalid'), 'true');
    await shot('deploy-errors.png');

    // The good one comes in through the file picker.
    await page.getByLabel('Or upload a JSON file').setInputFiles({
      name: 'book-flow.json', mimeType: 'application/json', buffer: Buffer.from(flowText(ENGINE)),
    });
    await page.waitForFunction(() => document.getElementById('flow-input').value.includes('"steps"'));
    await page.getByRole('button', { name: 'Deploy', exact: true }).click();
    const row = page.locator('#engines-table tbody tr', { hasText: ENGINE });
    await row.waitFor();
    assert.match(await page.locator('#deploy-summary').innerText(), /Deployed as engine/);
    assert.match(await row.innerText(), /pro/);
    assert.match(await row.innerText(), /parallel/);
    assert.match(await row.innerText(), /openai\/gpt-4o-mini/);
    assert.match(await row.innerText(), /anthropic\/claude-3-5-haiku-latest/);
    assert.equal(await row.getByRole('switch').getAttribute('aria-checked'), 'true');
    assert.equal(await page.getByRole('alert').innerText(), '');
    await shot('engines.png', { top: true });
  });

  test('an engine can be deactivated, and deleted after confirming in a dialog', async () => {
    const scratch = `Scratch ${stamp}`;
    const made = await api(env.ADMIN_TOKEN, 'POST', '/v1/engines', JSON.parse(flowText(scratch)));
    assert.equal(made.status, 201, JSON.stringify(made.body));
    await page.getByRole('button', { name: 'Refresh' }).first().click();
    const row = page.locator(`#engines-table tr[data-engine-id="${made.body.id}"]`);
    await row.waitFor();
    await row.getByRole('switch', { name: `Active: ${scratch}` }).click();
    await page.waitForFunction((id) => document.querySelector(`tr[data-engine-id="${id}"] [role=switch]`)
      ?.getAttribute('aria-checked') === 'false', made.body.id);
    assert.equal((await api(env.ADMIN_TOKEN, 'GET', `/v1/engines/${made.body.id}`)).body.active, false);

    await row.getByRole('button', { name: `Delete engine ${scratch}` }).click();
    const dialog = page.getByRole('dialog', { name: 'Delete engine?' });
    await dialog.waitFor();
    assert.match(await dialog.innerText(), new RegExp(scratch));
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    await dialog.waitFor({ state: 'hidden' });
    assert.equal(await row.count(), 1);
    await row.getByRole('button', { name: `Delete engine ${scratch}` }).click();
    await dialog.getByRole('button', { name: 'Delete engine' }).click();
    await row.waitFor({ state: 'detached' });
    assert.equal((await api(env.ADMIN_TOKEN, 'GET', `/v1/engines/${made.body.id}`)).status, 404);
  });

  test("an engine's versions: history with numbers, a diff, one-click rollback after confirming, a rollout", async () => {
    const name = `Versioned ${stamp}`;
    const made = await api(env.ADMIN_TOKEN, 'POST', '/v1/engines', JSON.parse(flowText(name)));
    assert.equal(made.status, 201, JSON.stringify(made.body));
    const id = made.body.id;
    const changed = await api(env.ADMIN_TOKEN, 'PATCH', `/v1/engines/${id}`, {
      flow: JSON.parse(flowText(name, (d) => { d.steps[0].configuration.model = 'gpt-4.1-mini'; return d; })),
    });
    assert.equal(changed.status, 200, JSON.stringify(changed.body));
    await page.getByRole('tab', { name: 'Engines' }).click();
    await page.getByRole('button', { name: 'Refresh' }).first().click();
    const row = page.locator(`#engines-table tr[data-engine-id="${id}"]`);
    await row.waitFor();
    await row.getByRole('button', { name: `Versions of ${name}` }).click();
    const versions = page.locator('#versions-table tbody tr');
    await page.locator('#versions-table tr[data-version="2"]').waitFor();
    assert.equal(await versions.count(), 2);
    assert.match(await page.locator('#versions-table tr[data-version="2"]').innerText(), /current/);
    assert.match(await page.locator('#rollout-state').innerText(), /Current version 2\. No rollout\./);

    await page.getByRole('button', { name: 'Compare' }).click();
    const diff = page.locator('#diff-result');
    await diff.getByText('Version 1 → version 2').waitFor();
    assert.match(await diff.innerText(), /outline/);
    assert.match(await diff.innerText(), /configuration\.model/);
    assert.match(await diff.innerText(), /gpt-4\.1-mini/);

    const v1 = page.locator('#versions-table tr[data-version="1"]');
    await v1.getByRole('button', { name: 'Roll back to this' }).click();
    const dialog = page.getByRole('dialog', { name: 'Roll back?' });
    await dialog.waitFor();
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    await dialog.waitFor({ state: 'hidden' });
    assert.equal(await versions.count(), 2);
    await v1.getByRole('button', { name: 'Roll back to this' }).click();
    await dialog.getByRole('button', { name: 'Roll back to version 1' }).click();
    await page.locator('#versions-table tr[data-version="3"]').waitFor();
    assert.match(await page.locator('#versions-table tr[data-version="3"]').innerText(), /rollback of 1/);

    await page.locator('#versions-table tr[data-version="2"]').getByRole('button', { name: 'Roll out to 10 %' }).click();
    await page.locator('#rollout-state', { hasText: 'Version 2 is rolled out to 10 %' }).waitFor();
    assert.match(await page.locator('#versions-table tr[data-version="2"]').innerText(), /candidate/);
    await shot('versions.png');
    await page.getByRole('button', { name: 'Abort rollout' }).click();
    await page.locator('#rollout-state', { hasText: 'No rollout' }).waitFor();
    assert.equal(pageErrors.length, 0, pageErrors.join('\n'));
    await page.getByRole('button', { name: 'Close' }).first().click();
    assert.equal((await api(env.ADMIN_TOKEN, 'DELETE', `/v1/engines/${id}`)).status, 204);
    await page.getByRole('button', { name: 'Refresh' }).first().click();
    await row.waitFor({ state: 'detached' });
  });

  test('bulk-assign to pro and enterprise with a preview, then change a priority inline', async () => {
    const engineId = (await api(env.ADMIN_TOKEN, 'GET', '/v1/engines')).body.find((e) => e.name === ENGINE).id;
    await page.getByRole('tab', { name: 'Assignments' }).click();
    const bulk = page.locator('#bulk-form');
    await bulk.getByRole('checkbox', { name: ENGINE }).check();
    const tiers = bulk.getByRole('group', { name: 'Tiers' });
    await tiers.getByRole('checkbox', { name: 'pro' }).check();
    await tiers.getByRole('checkbox', { name: 'enterprise' }).check();
    await page.locator('#bulk-priority').fill('10');
    assert.equal(await page.locator('#bulk-submit').isDisabled(), true, 'no submitting before a preview');
    await page.getByRole('button', { name: 'Preview' }).click();
    const preview = page.locator('#bulk-preview-table tbody tr');
    await preview.first().waitFor();
    assert.equal(await preview.count(), 2);
    assert.equal(await page.locator('#bulk-preview-table tbody tr[data-change="create"]').count(), 2);
    assert.match(await page.locator('#bulk-preview-caption').innerText(), /2 to create, 0 to update/);
    await shot('assignments-preview.png');
    await page.getByRole('button', { name: 'Assign 2' }).click();
    await page.getByRole('status').filter({ hasText: '2 assignments written' }).waitFor();

    const pro = page.locator(`#assignments-table tr[data-engine-id="${engineId}"][data-target="tier:pro"]`);
    const ent = page.locator(`#assignments-table tr[data-engine-id="${engineId}"][data-target="tier:enterprise"]`);
    await pro.waitFor();
    await ent.waitFor();
    const input = pro.getByRole('spinbutton', { name: `Priority of ${ENGINE} for tier pro` });
    assert.equal(await input.inputValue(), '10');
    await input.fill('50');
    await pro.getByRole('button', { name: `Save priority of ${ENGINE} for tier pro` }).click();
    await page.getByRole('status').filter({ hasText: 'is now 50' }).waitFor();
    const saved = await api(env.ADMIN_TOKEN, 'GET', `/v1/assignments?engine_id=${engineId}`);
    const byTier = Object.fromEntries(saved.body.map((a) => [a.tier, a.priority]));
    assert.deepEqual(byTier, { pro: 50, enterprise: 10 });

    // The admin is on the enterprise tier: the new engine is in their resolution order.
    await page.getByRole('button', { name: 'Show my resolution order' }).click();
    await page.locator('#mine-table tbody tr', { hasText: ENGINE }).waitFor();
    await shot('assignments.png', { top: true });
  });

  test("a pro user's generation shows live progress on the page until it succeeds", { timeout: 120_000 }, async () => {
    const engineId = (await api(env.ADMIN_TOKEN, 'GET', '/v1/engines')).body.find((e) => e.name === ENGINE).id;
    await page.getByRole('tab', { name: 'Generations' }).click();
    await page.locator('#gen-updated').filter({ hasText: 'updated' }).waitFor();
    // Record every status a row shows, to see the list change without a reload.
    await page.evaluate(() => {
      window.seenStatuses = [];
      const note = () => {
        for (const tr of document.querySelectorAll('#gen-table tr[data-job-id]')) {
          const s = `${tr.dataset.jobId}:${tr.dataset.status}`;
          if (!window.seenStatuses.includes(s)) window.seenStatuses.push(s);
        }
      };
      new MutationObserver(note).observe(document.getElementById('gen-table'), { subtree: true, childList: true });
      // And every state the job panel's timeline shows (it re-renders on each event).
      window.timeline = [];
      new MutationObserver(() => {
        const steps = [...document.querySelectorAll('#job-steps li[data-status]')].map((li) => li.dataset.status);
        const snap = `${document.getElementById('job').dataset.status}|${steps.filter((x) => x === 'succeeded').length}/${steps.length}`;
        if (window.timeline.at(-1) !== snap) window.timeline.push(snap);
      }).observe(document.getElementById('job'), { subtree: true, childList: true, attributes: true });
    });

    const requested = await api(env.PRO_TOKEN, 'POST', '/v1/generations', {
      input: { topic: 'Tide pools', chapters: CHAPTERS }, engine_id: engineId,
    });
    assert.equal(requested.status, 202, JSON.stringify(requested.body));
    const id = requested.body.id;
    // Follow it at once through the page's deep link (the list alone refreshes every 2 s,
    // and the offline providers finish a book in well under a second).
    await page.evaluate((jobId) => { window.location.hash = `generations/${jobId}`; }, id);
    const panel = page.locator('#job');
    await panel.waitFor();
    assert.match(await page.locator('#job-title').innerText(), new RegExp(id.slice(0, 8)));
    await page.locator('#job[data-status="succeeded"]').waitFor({ timeout: 90_000 });
    const row = page.locator(`#gen-table tr[data-job-id="${id}"]`);
    await page.locator(`#gen-table tr[data-job-id="${id}"][data-status="succeeded"]`).waitFor({ timeout: 10_000 });

    const steps = await page.locator('#job-steps > li').evaluateAll((lis) => lis.map((li) => [li.dataset.stepId, li.dataset.status]));
    assert.deepEqual(steps, [['outline', 'succeeded'], ['chapters', 'succeeded'], ['edit', 'succeeded']]);
    const items = await page.locator('#job-steps > li[data-step-id="chapters"] ol.items > li')
      .evaluateAll((lis) => lis.map((li) => li.dataset.status));
    assert.deepEqual(items, Array(CHAPTERS).fill('succeeded'), 'one timeline entry per chapter');
    assert.match(await page.locator('#job-stream').innerText(), /Finished: succeeded/);
    assert.match(await page.locator('#job-facts').innerText(), /(\d+) of \1 done/);
    assert.equal(await page.getByRole('button', { name: 'Cancel job' }).isDisabled(), true);
    const rowText = await row.innerText();
    assert.match(rowText, /(\d+) of \1 done/);
    assert.match(rowText, /Tide pools|Book engine/);
    assert.match(rowText, /[\d,]+ in · [\d,]+ out/);
    // Models used: one per step here (the offline provider stands in for each).
    const models = await row.locator('.chip').allInnerTexts();
    assert.equal(models.length, 3, JSON.stringify(models));
    assert.ok(models.some((m) => m.includes('gpt-4o-mini')) && models.some((m) => m.includes('claude-3-5-haiku')), JSON.stringify(models));
    const seen = await page.evaluate((jobId) => window.seenStatuses.filter((s) => s.startsWith(jobId)), id);
    assert.ok(seen.length >= 1 && seen.at(-1).endsWith(':succeeded'), JSON.stringify(seen));
    const timeline = await page.evaluate(() => window.timeline);
    const job = (await api(env.PRO_TOKEN, 'GET', `/v1/generations/${id}`)).body;
    console.log(`job ${id}: list showed ${seen.map((s) => s.split(':')[1]).join(' -> ')}; `
      + `timeline showed ${timeline.join(' -> ')}; ran ${Date.parse(job.finished_at) - Date.parse(job.started_at)} ms`);
    await page.getByRole('button', { name: 'Close' }).click();
    await panel.waitFor({ state: 'hidden' });
    await shot('generations.png', { top: true });
    // Choosing the job in the list opens its timeline again.
    await row.getByRole('button', { name: `Follow job ${id}` }).click();
    await page.locator('#job[data-status="succeeded"]').waitFor();
    assert.equal(await page.locator('#job-steps > li').count(), 3);
    await shot('job-timeline.png', { top: true });
  });

  test('signed in as the pro user, admin actions fail with a plain-words error', async () => {
    await page.getByRole('tab', { name: 'Engines' }).click();
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('Access token (JWT)').waitFor();
    await signIn(env.PRO_TOKEN);
    await page.getByLabel('Flow document (JSON)').fill(flowText(`Not allowed ${stamp}`));
    await page.getByRole('button', { name: 'Deploy', exact: true }).click();
    const alert = page.getByRole('alert');
    await alert.filter({ hasText: 'permission_denied' }).waitFor();
    const text = await alert.innerText();
    assert.match(text, /Deploy failed/);
    assert.match(text, /only admins can deploy engines/i);
    assert.match(text, /not allowed/i);
    await shot('permission-error.png');
    const engines = await api(env.ADMIN_TOKEN, 'GET', '/v1/engines');
    assert.ok(!engines.body.some((e) => e.name === `Not allowed ${stamp}`));
  });

  test('the page ran without script errors or blocked resources', () => {
    assert.deepEqual(pageErrors, []);
    assert.deepEqual(cspViolations, []);
  });
});
