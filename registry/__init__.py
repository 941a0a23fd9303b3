"""The catalogue of named backbone presets, as data: ``vision/*.yaml`` and ``llm/*.yaml``.

Installed as the package ``ovis_registry`` so the files travel with a wheel; plugins read them
through ``ovis.interfaces.presets``. One file per preset; the file name is the preset name.
"""
