"""The run engine: dispatch, journal, resume, cancellation."""
