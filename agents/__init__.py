"""dlzoo.agents: the engineer and master agents (deterministic, offline)."""
