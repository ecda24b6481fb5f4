"""The audit pipeline, one module per stage: load, transform, quantize, capture, match, measure.

:mod:`qaudit.pipeline.audit` is the only module that knows the order of the stages.
"""
