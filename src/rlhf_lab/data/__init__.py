"""Data sources and validation: every source normalised to the row types of ``rows``.

- ``sources``  read a source (embedded chitchat, local files, hub ids) and parse each format
- ``validate`` rejection reasons, field/text checks, duplicate detection
- ``rows``     the prompt / preference / scored row types and the normalised ``Example``
- ``splits``   hash splits and the deterministic subsample
- ``pairs``    human pairs, reference vs sample (SPIN), judge candidates
- ``prepare``  the prepare_preference pipeline the stage calls
"""
