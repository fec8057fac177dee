// The seed's React-side code run through the real @supabase/supabase-js (pinned by
// package-lock.json) against the local stack: tests/api/seed_js.rs starts PostgREST,
// the local development gateway (SUPABASE_URL), the service with a worker, and the users.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { supabase, signInAs } from './lib/supabase.js'
import { engineDeploymentService } from './services/engineDeploymentService.js'

const env = (name) => {
  const value = process.env[name]
  if (!value) throw new Error(`${name} must be set (tests/api/seed_js.rs sets it)`)
  return value
}
const ADMIN_TOKEN = env('ADMIN_TOKEN')
const ADMIN_USER_ID = env('ADMIN_USER_ID')
const PRO_TOKEN = env('PRO_TOKEN')
const PRO_USER_ID = env('PRO_USER_ID')
const example = JSON.parse(readFileSync(env('EXAMPLE_FLOW_PATH'), 'utf8'))

// What the seed's handleDeployFlow builds from the playground's state.
function engineConfigFrom(flow, name) {
  const steps = flow.steps.map(({ id, name, configuration }) => ({ id, name, configuration }))
  const models = steps.map((s) => ({ step: s.id, provider: s.configuration.provider, model: s.configuration.model }))
  return {
    name,
    description: flow.description,
    flow_config: { type: flow.type, steps },
    models,
    execution_mode: 'sequential',
    tier: 'pro',
    active: true
  }
}

async function waitForJob(id, limitMs = 60_000) {
  const started = Date.now()
  for (;;) {
    const { data, error } = await supabase
      .from('generation_jobs')
      .select('id, status, result, error')
      .eq('id', id)
      .single()
    if (error) throw error
    if (['succeeded', 'failed', 'cancelled'].includes(data.status)) return data
    if (Date.now() - started > limitMs) throw new Error(`job ${id} still ${data.status}`)
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
}

let engine // the engine deployed through the seed's service

test('an admin deploys an engine the way the seed does, created_by from auth.getUser()', async () => {
  await signInAs(ADMIN_TOKEN)
  const { data: { user } } = await supabase.auth.getUser()
  assert.equal(user.id, ADMIN_USER_ID)
  engine = await engineDeploymentService.deployEngine(engineConfigFrom(example, 'Seed book engine'))
  assert.ok(engine.id)
  assert.equal(engine.created_by, ADMIN_USER_ID)
  assert.equal(engine.execution_mode, 'sequential')
  assert.deepEqual(engine.flow_config.steps.map((s) => s.id), example.steps.map((s) => s.id))
})

test('the admin lists, updates and deletes engines through the seed service', async () => {
  await signInAs(ADMIN_TOKEN)
  const scratch = await engineDeploymentService.deployEngine(engineConfigFrom(example, 'Scratch engine'))
  const listed = await engineDeploymentService.getEngines()
  assert.deepEqual(listed.slice(0, 2).map((e) => e.id), [scratch.id, engine.id], 'newest first')

  const updated = await engineDeploymentService.updateEngine(engine.id, { description: 'Edited from supabase-js' })
  assert.equal(updated.description, 'Edited from supabase-js')
  assert.equal(updated.id, engine.id)

  await engineDeploymentService.deleteEngine(scratch.id)
  const after = await engineDeploymentService.getEngines()
  assert.ok(!after.some((e) => e.id === scratch.id), 'deleted engine still listed')
  assert.ok(after.some((e) => e.id === engine.id))
})

test('the admin assigns the engine to the pro tier with a supabase-js insert', async () => {
  await signInAs(ADMIN_TOKEN)
  const { data, error } = await supabase
    .from('engine_assignments')
    .insert({ engine_id: engine.id, assignment_type: 'tier', tier: 'pro', priority: 10 })
    .select()
    .single()
  assert.equal(error, null, error?.message)
  assert.equal(data.engine_id, engine.id)
  assert.equal(data.tier, 'pro')
})

test('a pro user lists the engine but cannot deploy one', async () => {
  await signInAs(PRO_TOKEN)
  const listed = await engineDeploymentService.getEngines()
  assert.ok(listed.some((e) => e.id === engine.id), 'the pro user does not see the assigned engine')
  await assert.rejects(
    engineDeploymentService.deployEngine(engineConfigFrom(example, 'Not allowed')),
    (error) => /row-level security/i.test(error.message)
  )
})

test('a pro user resolves the engine and gets a book through rpc()', async () => {
  await signInAs(PRO_TOKEN)
  const resolved = await supabase.rpc('resolve_engine')
  assert.equal(resolved.error, null, resolved.error?.message)
  assert.equal(resolved.data.id, engine.id)
  const mine = await supabase.rpc('my_engines')
  assert.equal(mine.error, null, mine.error?.message)
  assert.equal(mine.data[0].id, engine.id)

  const requested = await supabase.rpc('request_generation', { input: { topic: 'tide pools', chapters: 2 } })
  assert.equal(requested.error, null, requested.error?.message)
  assert.equal(requested.data.user_id, PRO_USER_ID)
  assert.equal(requested.data.engine_id, engine.id)
  const job = await waitForJob(requested.data.id)
  assert.equal(job.status, 'succeeded', JSON.stringify(job))
  assert.ok(job.result.book.length > 0, 'empty book')

  // The text as it was written, read the way the README tells the React app to: the
  // owner's own rows under RLS, in seq order; each call's text is its step's output.
  const { data: rows, error } = await supabase
    .from('generation_deltas')
    .select('seq,step_id,item_index,kind,attempt,run,text,meta')
    .eq('job_id', job.id)
    .gt('seq', 0)
    .order('seq')
  assert.equal(error, null, error?.message)
  assert.ok(rows.length > 0, 'the job streamed its text')
  assert.deepEqual(rows.map((r) => r.seq), rows.map((_, i) => i + 1))
  const texts = {}
  for (const r of rows) {
    const key = `${r.step_id}:${r.item_index}`
    // An attempt starts the call's text again from its own, a delta adds to it, a
    // discard or restart empties it (sql/V11, V15).
    texts[key] = (r.kind === 'delta' ? (texts[key] ?? '') : '') + r.text
  }
  const steps = await supabase.from('generation_steps').select('step_id,item_index,output').eq('job_id', job.id)
  assert.equal(steps.error, null, steps.error?.message)
  const written = steps.data.filter((s) => typeof s.output === 'string')
  assert.ok(written.length >= 2, JSON.stringify(steps.data))
  for (const s of written) assert.equal(texts[`${s.step_id}:${s.item_index}`], s.output, `${s.step_id}:${s.item_index}`)
})

// A React playground's state: camelCase keys and bare placeholders. The service reads
// these shapes (each rewrite is a note on the engine's check), so the book is written.
test('a React-shaped engine deployed through supabase-js runs', async () => {
  await signInAs(ADMIN_TOKEN)
  const config = {
    name: 'React-shaped engine',
    description: 'camelCase keys and bare placeholders, as a playground writes them',
    flow_config: {
      type: 'full',
      steps: [
        { id: 'outline', name: 'Outline', configuration: { provider: 'openai', model: 'gpt-4o-mini', maxTokens: 800, systemPrompt: 'You plan books.', prompt: 'Plan a short book about {{topic}}.' } },
        { id: 'draft', name: 'Draft', configuration: { provider: 'openai', model: 'gpt-4o-mini', maxTokens: 1200, prompt: 'Write the book from this plan: {{outline}}' } }
      ]
    },
    models: [{ provider: 'openai', model: 'gpt-4o-mini' }],
    execution_mode: 'sequential',
    tier: 'pro',
    active: true
  }
  const reactEngine = await engineDeploymentService.deployEngine(config)
  const assigned = await supabase
    .from('engine_assignments')
    .insert({ engine_id: reactEngine.id, assignment_type: 'user', user_id: PRO_USER_ID, priority: 100 })
  assert.equal(assigned.error, null, assigned.error?.message)

  await signInAs(PRO_TOKEN)
  const requested = await supabase.rpc('request_generation', { input: { topic: 'kites' }, engine_id: reactEngine.id })
  assert.equal(requested.error, null, JSON.stringify(requested.error))
  const job = await waitForJob(requested.data.id)
  assert.equal(job.status, 'succeeded', `the job failed on the engine's configuration: ${JSON.stringify(job)}`)

  // The assigned user (and the React app) can read why it ran: the check and its notes.
  const check = await supabase.from('engine_checks').select('state, notes').eq('engine_id', reactEngine.id).single()
  assert.equal(check.error, null, JSON.stringify(check.error))
  assert.equal(check.data.state, 'runnable')
  assert.match(JSON.stringify(check.data.notes), /maxTokens/)
})
