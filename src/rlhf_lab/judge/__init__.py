"""The LLM judge: rubrics, backends (local, openai) and the resumable score cache."""
