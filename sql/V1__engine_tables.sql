-- The engine tables, exactly as the product specification writes them
-- (shared/seeds/000_630c27e57c0c861c.txt, "MISSING DATABASE TABLES").
--
-- The statements below are the specification's, byte for byte. Only their order
-- differs: the ai_engines SELECT policy reads engine_assignments, so both tables
-- are created before any policy. Everything bookengine adds (privileges,
-- functions, job tables) lives in later migrations, never in this file.

CREATE TABLE ai_engines (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name text NOT NULL,
  description text,
  flow_config jsonb NOT NULL, -- Complete flow configuration
  models jsonb NOT NULL, -- AI models and configurations
  execution_mode text DEFAULT 'sequential' CHECK (execution_mode IN ('sequential', 'parallel')),
  tier text CHECK (tier IN ('hobby', 'pro', 'enterprise')),
  active boolean DEFAULT true,
  created_by uuid REFERENCES auth.users(id),
  created_at timestamptz DEFAULT now(),
  updated_at timestamptz DEFAULT now()
);

-- Enable RLS
ALTER TABLE ai_engines ENABLE ROW LEVEL SECURITY;

CREATE TABLE engine_assignments (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  engine_id uuid REFERENCES ai_engines(id) ON DELETE CASCADE,
  assignment_type text CHECK (assignment_type IN ('tier', 'user')) NOT NULL,
  tier text CHECK (tier IN ('hobby', 'pro', 'enterprise')),
  user_id uuid REFERENCES auth.users(id),
  priority integer DEFAULT 0,
  active boolean DEFAULT true,
  created_at timestamptz DEFAULT now(),
  CONSTRAINT valid_assignment CHECK (
    (assignment_type = 'tier' AND tier IS NOT NULL AND user_id IS NULL) OR
    (assignment_type = 'user' AND user_id IS NOT NULL AND tier IS NULL)
  )
);

-- Enable RLS
ALTER TABLE engine_assignments ENABLE ROW LEVEL SECURITY;

-- RLS Policies
CREATE POLICY "Users can view engines assigned to them" ON ai_engines
  FOR SELECT USING (
    id IN (
      SELECT engine_id FROM engine_assignments 
      WHERE (assignment_type = 'user' AND user_id = auth.uid()) 
         OR (assignment_type = 'tier' AND tier = (
           SELECT tier FROM user_credits WHERE user_id = auth.uid()
         ))
    )
  );

CREATE POLICY "Admins can manage all engines" ON ai_engines
  FOR ALL USING (
    EXISTS (
      SELECT 1 FROM profiles 
      WHERE id = auth.uid() AND role = 'admin'
    )
  );

-- RLS Policies
CREATE POLICY "Users can view their assignments" ON engine_assignments
  FOR SELECT USING (
    (assignment_type = 'user' AND user_id = auth.uid()) OR
    (assignment_type = 'tier' AND tier = (
      SELECT tier FROM user_credits WHERE user_id = auth.uid()
    ))
  );

CREATE POLICY "Admins can manage all assignments" ON engine_assignments
  FOR ALL USING (
    EXISTS (
      SELECT 1 FROM profiles 
      WHERE id = auth.uid() AND role = 'admin'
    )
  );

-- Indexes for performance
CREATE INDEX idx_engine_assignments_user_id ON engine_assignments(user_id);
CREATE INDEX idx_engine_assignments_tier ON engine_assignments(tier);
CREATE INDEX idx_engine_assignments_engine_id ON engine_assignments(engine_id);
