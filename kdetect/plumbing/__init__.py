"""Plumbing: errors, safe outputs, parsing and process settings that every layer uses."""
