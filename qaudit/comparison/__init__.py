"""Comparing exports of one network: align their layers, run the audits, explain the differences."""
