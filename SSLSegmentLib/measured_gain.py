"""What each method gained on SSLSegment's label-efficiency bench. GENERATED: do not edit.

``python bench/method_evidence.py`` writes this file from the committed reports
``bench/results/pooled_baseline.json``,
``bench/results/label_efficiency_after_reference_settings.json``,
and a test fails when it no longer matches them. :func:`SSLSegmentLib.catalogue.measured_text`
words it for the panel, the web UI and ``sslsegment methods``.
"""

SETTING = 'cardiac MRI at the CPU preset, ACDC 2D with 7 of 70 patients labelled and LA 3D with 8 of 64'

GAP_CLOSED: dict[str, dict[str, tuple[int, int | None, int]]] = {
    # method: {set: (percent of the gap to full labels closed, rough standard error, runs)}
    'abd': {'ACDC': (-100, 72, 2)},
    'adversarial': {'ACDC': (20, 8, 3), 'LA': (7, 5, 3)},
    'bcp': {'ACDC': (66, 5, 10), 'LA': (50, 6, 3)},
    'cct': {'ACDC': (3, 5, 3), 'LA': (-2, None, 1)},
    'cps': {'ACDC': (6, 10, 3), 'LA': (16, None, 1)},
    'ctct': {'ACDC': (26, 7, 4), 'LA': (40, None, 1)},
    'dct': {'ACDC': (8, 17, 3), 'LA': (9, None, 1)},
    'entropy_minimization': {'ACDC': (4, 6, 3), 'LA': (0, 4, 3)},
    'fixmatch': {'ACDC': (27, 5, 10), 'LA': (3, None, 1)},
    'ict': {'ACDC': (4, 11, 4), 'LA': (1, None, 1)},
    'mean_teacher': {'ACDC': (4, 8, 4), 'LA': (3, None, 1)},
    'rdrop': {'ACDC': (5, 5, 3), 'LA': (19, 10, 3)},
    'uamt': {'ACDC': (10, 11, 2), 'LA': (-1, None, 1)},
    'unimatch': {'ACDC': (36, 5, 6), 'LA': (61, 9, 3)},
    'urpc': {'ACDC': (-19, 7, 8), 'LA': (-11, 8, 3)},
}

BELOW_SUPERVISED = {  # below supervised-only by more than 5 % of the gap, beyond the error
    'abd': ['ACDC'],
    'urpc': ['ACDC'],
}
