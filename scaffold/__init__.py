"""dlzoo.scaffold: project generation."""
