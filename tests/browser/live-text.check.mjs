// The admin page shows a job's text growing live in its timeline (issue #14), in
// headless Chromium. `cargo test --test api browser::admin_page_shows_text` starts the
// service, a running job, and writes its text rows while this file watches:
//
//   BOOKENGINE_URL, ADMIN_TOKEN, JOB_ID, FINALS (JSON: "step_id:item_index" -> final text),
//   READY_FILE (written once the page follows the job: the writer starts then)
//
// Not a *.test.mjs: it needs that writer.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const need = (k) => {
  assert.ok(process.env[k], `${k} is required`);
  return process.env[k];
};

let browser;
let page;
const pageErrors = [];

before(async () => {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking'],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on('pageerror', (e) => pageErrors.push(String(e)));
});

after(async () => {
  await browser?.close();
});

test('the chapter text grows in the timeline before its step is finished', { timeout: 90_000 }, async () => {
  const base = need('BOOKENGINE_URL').replace(/\/+$/, '');
  const job = need('JOB_ID');
  const finals = JSON.parse(need('FINALS'));
  await page.goto(`${base}/admin`);
  await page.getByLabel('Access token (JWT)').fill(need('ADMIN_TOKEN'));
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.locator('#who').waitFor({ state: 'visible' });
  await page.getByRole('tab', { name: 'Generations' }).click();
  await page.evaluate((id) => { window.location.hash = `generations/${id}`; }, job);
  await page.locator('#job').waitFor();
  await page.locator('#job-stream').filter({ hasText: 'Live' }).waitFor();
  writeFileSync(need('READY_FILE'), 'ready');

  // Sample what the page shows of the first chapter while the rows arrive.
  const key = 'chapters:0';
  const text = page.locator(`#job-steps pre[data-live-key="${key}"]`);
  await text.waitFor({ timeout: 30_000 });
  const samples = [];
  for (let i = 0; i < 40 && samples.length < 3; i += 1) {
    const shown = await text.innerText();
    const status = await page.locator('#job').getAttribute('data-status');
    const entry = await page.locator('#job-steps > li[data-step-id="chapters"]').getAttribute('data-status');
    if (shown.length && !samples.some((s) => s.shown === shown)) samples.push({ shown, status, entry });
    await page.waitForTimeout(100);
  }
  assert.ok(samples.length >= 2, `the text grew while watched: ${JSON.stringify(samples.map((s) => s.shown.length))}`);
  assert.ok(samples[1].shown.length > samples[0].shown.length && samples[1].shown.startsWith(samples[0].shown));
  assert.equal(samples[0].status, 'running', 'text is shown while the job runs');
  assert.notEqual(samples[0].entry, 'succeeded', 'and before its step is finished');

  // The end: every call's text is its final text (a discarded attempt's text is gone).
  await page.locator('#job[data-status="succeeded"]').waitFor({ timeout: 60_000 });
  for (const [k, final] of Object.entries(finals)) {
    const shown = await page.locator(`#job-steps pre[data-live-key="${k}"]`).evaluate((el) => el.textContent);
    assert.equal(shown, final, `the text of ${k}`);
  }
  const all = await page.locator('#job-steps').innerText();
  assert.ok(!all.includes('VOID') && !all.includes('LOST'), 'no discarded text is shown');
  console.log(`chapters:0 shown at ${samples.map((s) => s.shown.length).join(', ')} characters while running`);
  assert.deepEqual(pageErrors, []);
});
