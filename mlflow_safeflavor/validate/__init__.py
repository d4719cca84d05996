"""Pure-Python structural checks of payloads, run before (or instead of) trusting native parsers."""
