// The seed's `../lib/supabase`: one supabase-js client for the whole app, here made
// from the local stack's SUPABASE_URL (the local development gateway) and publishable
// key. A person signs in by handing the client their session (`auth.setSession`), as
// the React app's auth flow leaves it.
import { createClient } from '@supabase/supabase-js'
// Node 20 has no WebSocket of its own, and supabase-js sets up Realtime on creation.
import ws from 'ws'

const url = process.env.SUPABASE_URL
const publishableKey = process.env.SUPABASE_PUBLISHABLE_KEY
if (!url || !publishableKey) {
  throw new Error('SUPABASE_URL and SUPABASE_PUBLISHABLE_KEY must be set (tests/api/seed_js.rs sets them)')
}

export const supabase = createClient(url, publishableKey, {
  // Node has no browser storage to keep a session in, and nothing refreshes it here.
  auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
  realtime: { transport: ws }
})

/** Make `supabase` act for the person whose access token this is. */
export async function signInAs(accessToken) {
  const { error } = await supabase.auth.setSession({
    access_token: accessToken,
    // setSession needs one; nothing refreshes a test's hour-long token.
    refresh_token: 'local-development-only'
  })
  if (error) throw error
}
