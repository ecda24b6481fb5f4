"""Why a layer loses precision and what to do: causes, measured sensitivity, the fix search."""
