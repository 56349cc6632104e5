"""SKD: network specialisation by feature-level KD (docs/methods.md §2).

Specialise a model to a task that is a subset `S` of its classes, usually
with little data: the student has an `|S|`-way head and learns from the
task's labels and from the teacher's feature maps only,
`CE_S + β · Σ_stages mean((a_l(F_s^l) − F_t^l)²)`, one trainable adapter
`a_l` per stage (1×1 conv + BN, or the non-linear FA aligner) and no logit
term, because the teacher's logits cover the full label space.

The three baselines it is reported beside, on the same data:

- scratch: the student alone, `student.fit` on the subset;
- fine-tuning: `finetune_model(teacher, len(S))`, a copy of the teacher's
  backbone with a new `|S|`-way head, trained on the subset;
- renormalised logits: `renormalised_logits_distiller`, logit KD against
  the teacher's softmax restricted to `S` and renormalised
  (`kd.losses.SubsetLogitsDistillation`).

Example:

```python
(x_task, y_task), mapping = kd.data.class_subset(
    (x_train, y_train), [3, 5, 8], max_per_class=20)
distiller = kd.skd.skd_distiller(
    teacher, student, ["stage1", "stage2"], beta=100.0)
distiller.compile("adam", keras.losses.SparseCategoricalCrossentropy(
    from_logits=True), metrics=["accuracy"])
distiller.fit(x_task, y_task, epochs=30)  # Reports each stage's term.

finetuned = kd.skd.finetune_model(teacher, len(mapping.original_ids))
baseline = kd.skd.renormalised_logits_distiller(
    teacher, student_copy, mapping.original_ids)
```
"""

import keras

from keras_kd.distiller import Distiller
from keras_kd.losses.feature_alignment import FeatureAlignment
from keras_kd.losses.subset_logits_distillation import SubsetLogitsDistillation


def skd_distiller(
    teacher,
    student,
    teacher_layer_names,
    student_layer_names=None,
    beta=100.0,
    aligner="linear",
    **kwargs,
):
    """The SKD Distiller: `CE_S + β · Σ_l mean((a_l(F_s^l) − F_t^l)²)`.

    One `kd.losses.FeatureAlignment` per stage (named `skd_<student layer>`,
    each reported as its own metric) and no logit term, so the teacher may
    have any number of classes. Compile it with the task's supervised loss.

    Args:
        teacher: the trained teacher (all classes).
        student: the student with an `|S|`-way head.
        teacher_layer_names: one teacher feature layer per stage.
        student_layer_names: the student's layer for each stage, in the same
            order (default: the same names as the teacher's).
        beta: `β`, the weight of every stage's term (default 100, the
            FitNets weight). Tune it to the feature scale: on digits
            (3 classes, 10 images each, two 8×8/4×4 stages) β = 100 and
            β = 10 fell below training from scratch and β = 1 matched it.
        aligner: `"linear"` (1×1 conv + BN, the paper's adapter) or
            `"nonlinear"` (the FA aligner).
        **kwargs: passed to `kd.Distiller` (e.g. `augmentation`).

    Example:

    ```python
    distiller = kd.skd.skd_distiller(teacher, student, ["stage1", "stage2"])
    ```
    """
    teacher_layer_names = _as_names(teacher_layer_names, "teacher_layer_names")
    if student_layer_names is None:
        student_layer_names = teacher_layer_names
    student_layer_names = _as_names(student_layer_names, "student_layer_names")
    if len(teacher_layer_names) != len(student_layer_names):
        raise ValueError(
            f"SKD pairs teacher and student stages one to one, but got "
            f"{len(teacher_layer_names)} teacher layers "
            f"{teacher_layer_names} and {len(student_layer_names)} student "
            f"layers {student_layer_names}; give one student layer per "
            f"teacher layer."
        )
    if len(set(student_layer_names)) != len(student_layer_names):
        raise ValueError(
            f"student_layer_names must be distinct, got {student_layer_names}."
        )
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}.")
    for key in ("distillation_loss_weights", "student_loss_weight", "weighting"):
        if key in kwargs:
            raise ValueError(
                f"skd_distiller sets {key} itself (CE + beta · Σ stages); "
                f"build a kd.Distiller directly for another weighting."
            )
    terms = [
        FeatureAlignment(t, s, aligner=aligner, name=f"skd_{s}")
        for t, s in zip(teacher_layer_names, student_layer_names)
    ]
    return Distiller(
        teacher,
        student,
        terms,
        distillation_loss_weights=[float(beta)] * len(terms),
        student_loss_weight=1.0,
        weighting="additive",
        **kwargs,
    )


def renormalised_logits_distiller(
    teacher, student, class_indices, temperature=4.0, student_loss_weight=0.1, **kwargs
):
    """The renormalised-logits baseline: `0.1·CE + 0.9·KD_S` by default.

    `KD_S` is `kd.losses.SubsetLogitsDistillation(class_indices,
    temperature)`, Hinton KD against the teacher's softmax restricted to
    the subset and renormalised; the weights are the CIFAR-100 KD setting
    of docs/methods.md §0.

    Example:

    ```python
    distiller = kd.skd.renormalised_logits_distiller(
        teacher, student, mapping.original_ids)
    ```
    """
    return Distiller(
        teacher,
        student,
        SubsetLogitsDistillation(class_indices, temperature),
        student_loss_weight=student_loss_weight,
        **kwargs,
    )


def finetune_model(teacher, num_classes, feature_layer=None, name=None):
    """A copy of the teacher's backbone with a new `num_classes`-way head.

    The backbone's weights are copied (the teacher is left unchanged) and
    stay trainable; the new `Dense` head, named `"logits"`, is freshly
    initialised. The backbone ends at `feature_layer` (default: the input
    of the teacher's last layer, i.e. its pooled features).

    Example:

    ```python
    model = kd.skd.finetune_model(teacher, num_classes=3)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    model.fit(x_task, y_task, epochs=30)
    ```
    """
    if not isinstance(teacher, keras.Model) or not teacher.built:
        raise ValueError(
            "finetune_model needs a built keras.Model teacher, got "
            f"{type(teacher).__name__}."
        )
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes}.")
    try:
        inputs = teacher.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(
            f"finetune_model copies a functional or Sequential model; "
            f"'{teacher.name}' is subclassed. Rebuild it as a functional "
            f"model or add the new head yourself."
        )
    backbone_copy = keras.models.clone_model(teacher)
    backbone_copy.set_weights(teacher.get_weights())
    backbone_copy.trainable = True  # A Distiller froze the teacher's layers.
    if feature_layer is None:
        features = backbone_copy.layers[-1].input
    else:
        names = [layer.name for layer in backbone_copy.layers]
        if feature_layer not in names:
            raise ValueError(
                f"The teacher '{teacher.name}' has no layer named "
                f"{feature_layer!r}. Available layers: {names}."
            )
        features = backbone_copy.get_layer(feature_layer).output
    if isinstance(features, (list, tuple)):
        raise ValueError(
            "The teacher's last layer takes several inputs; name the "
            "backbone's output with feature_layer=."
        )
    if len(features.shape) > 2:
        features = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(int(num_classes), dtype="float32", name="logits")(
        features
    )
    return keras.Model(
        backbone_copy.inputs, outputs, name=name or f"{teacher.name}_finetuned"
    )


def _as_names(names, argument):
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"{argument} must be a layer name or a non-empty list of layer "
            f"names, got {names!r}."
        )
    return names
