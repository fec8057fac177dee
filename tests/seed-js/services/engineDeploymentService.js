// The seed's EngineDeploymentService exactly as the specification writes it; only the
// import of `supabase` points at this folder's client (Node needs the file extension).
import { supabase } from '../lib/supabase.js'

class EngineDeploymentService {
  async deployEngine(engineConfig) {
    const { data, error } = await supabase
      .from('ai_engines')
      .insert([{
        ...engineConfig,
        created_by: (await supabase.auth.getUser()).data.user?.id
      }])
      .select()
      .single()

    if (error) throw error
    return data
  }

  async getEngines() {
    const { data, error } = await supabase
      .from('ai_engines')
      .select('*')
      .order('created_at', { ascending: false })

    if (error) throw error
    return data || []
  }

  async updateEngine(id, updates) {
    const { data, error } = await supabase
      .from('ai_engines')
      .update(updates)
      .eq('id', id)
      .select()
      .single()

    if (error) throw error
    return data
  }

  async deleteEngine(id) {
    const { error } = await supabase
      .from('ai_engines')
      .delete()
      .eq('id', id)

    if (error) throw error
  }
}

export const engineDeploymentService = new EngineDeploymentService()
