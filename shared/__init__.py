"""Portico's common library: every process imports its plumbing from here."""
