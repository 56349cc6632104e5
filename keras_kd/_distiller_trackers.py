"""The loss trackers of `kd.Distiller`: one per term (repeated names get a
suffix) and one per part of multi-part terms, beside the student,
distillation and total loss.

Example:

```python
trackers = _distiller_trackers.term_trackers(terms)  # [[Mean("kd")], ...]
```
"""

import keras


def term_trackers(terms):
    """`[[Mean(name), Mean(name_part), ...], ...]`, one list per term."""
    names = [term.name for term in terms]
    names = [
        name if names.count(name) == 1 else f"{name}_{names[:i].count(name)}"
        for i, name in enumerate(names)
    ]
    return [
        [keras.metrics.Mean(name=name)]
        + [keras.metrics.Mean(name=f"{name}_{part}") for part in term.component_names]
        for name, term in zip(names, terms)
    ]


def tracker_names(term_trackers):
    """The names of every tracker the Distiller reports."""
    return {"student_loss", "distillation_loss", "total_loss"} | {
        tracker.name for trackers in term_trackers for tracker in trackers
    }
