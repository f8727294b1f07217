"""The event log and everything that reads it: store, projections, dispatcher, embedded services."""
