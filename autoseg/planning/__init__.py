"""Planning: the plans artifact, pure heuristics and the planner that combines them."""
