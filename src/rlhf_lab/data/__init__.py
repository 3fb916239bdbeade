"""Data sources and validation: every source normalised to the row types of ``rows``.

- ``readers``  read a source's records (embedded chitchat, local files, hub ids)
- ``sources``  infer the format and parse the generic ones (a task's own: its ``formats`` module)
- ``validate`` rejection reasons, field/text checks, duplicate detection
- ``rows``     the prompt / preference / scored row types and the normalised ``Example``
- ``splits``   hash splits and the deterministic subsample
- ``pairs``    human pairs, reference vs sample (SPIN), judge candidates
- ``prepare``  the prepare_preference pipeline the stage calls
"""
