"""Assets: the staging manifest and the graph that publishes the transcript tables."""
