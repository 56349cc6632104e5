import keras
from keras import ops

from keras_kd import _distiller_checks as checks
from keras_kd import _distiller_trackers
from keras_kd import batch_statistics
from keras_kd import callbacks as callbacks_lib
from keras_kd import model_outputs
from keras_kd import side_inputs
from keras_kd import teacher_inputs
from keras_kd._compat import DotNotTrackScope
from keras_kd._compat import MultiWorkerFitMixin
from keras_kd._compat import compiled_loss
from keras_kd._compat import scale_loss_for_distribution
from keras_kd._compat import unscale_loss_for_distribution
from keras_kd.losses.base import class_indices
from keras_kd.losses.base import weighted_mean
from keras_kd.offline.recorded_teacher import RecordedTeacher


@keras.saving.register_keras_serializable(package="keras_kd")
class Distiller(MultiWorkerFitMixin, keras.Model):
    """Trains a student from one or more frozen teachers in one pass.

    A drop-in superset of `keras.distillation.Distiller`: same constructor
    and `total = student_loss_weight · student_loss +
    (1 − student_loss_weight) · Σ_i w_i · term_i`; with
    `weighting="additive"` the papers' form `total = student_loss_weight ·
    student_loss + Σ_i w_i · term_i` (e.g. `CE + 0.9·KD + 100·FitNets`).
    Per training step the
    student runs once and yields its logits and every feature the terms
    read; each teacher runs once, in inference mode (see
    `teacher_batch_statistics`), outside the gradient.
    `predict` runs the student alone; `evaluate` too with
    `evaluate_teacher=False`.

    Args:
        teacher: a trained `keras.Model`, a `kd.SoftLabelTeacher`, or a list
            of them (multi-teacher). Frozen during distillation.
        student: the `keras.Model` to train. Functional and Sequential models
            expose every layer by name; a subclassed model returns its logits,
            or a dict of named outputs with a `"logits"` entry when terms read
            its features. A teacher ending in a softmax is read through its
            log-probabilities; a softmax student is refused by logit terms.
        distillation_losses: a term or list of terms from `kd.losses`
            (`keras.distillation` losses are wrapped and keep their meaning).
        distillation_loss_weights: one weight per term (default 1.0 each).
        student_loss_weight: weight of the supervised loss given to
            `compile(loss=...)`; in [0, 1] for `"convex"` weighting.
        weighting: `"convex"` (Keras' formula, the default) or `"additive"`.
        augmentation: an optional layer (e.g. `kd.data.RandomCropFlip()`)
            applied to each training batch inside the compiled step, before
            teachers and student, so both see the same augmented images and
            the accelerator is not starved by a host pipeline.
        teacher_preprocessing: each teacher's own input transform, applied
            in the step to the (augmented) batch the student gets: a Keras
            layer or model (`keras.layers.Resizing(224, 224)`,
            `kd.teacher_inputs.unnormalize(mean, std)` for a teacher that
            scales pixels itself), a list with one per teacher (None: the
            student's inputs), or None. See `kd.teacher_inputs`.
        teacher_weights: one positive weight per teacher, normalised to sum
            to 1 (default equal).
        teacher_batch_statistics: a bool, or one per teacher: whether the
            teacher's BatchNorm layers normalise each training batch with
            its own statistics (PyTorch's train mode, as OFD's official
            code runs its teacher) rather than their moving statistics;
            dropout stays off, and nothing of the teacher is updated.
        stop_on_nonfinite_loss: whether `fit` adds a
            `kd.callbacks.StopOnNonFiniteLoss` (stops on a NaN/Inf term).
        evaluate_teacher: whether `evaluate` (and so `fit`'s validation)
            also runs the teachers and reports every loss below, with
            `loss` the total, as `keras.distillation` does; this costs one
            teacher forward pass per evaluation batch. `False`: the student
            alone (`loss` is its compiled loss). `None` (default): `True`
            unless a teacher or term reads batch entries that evaluation
            data lack (`kd.offline.RecordedTeacher`, CRD's example index) or
            a term expands views (DLKD).

    Reported metrics: `student_loss`, `distillation_loss` (`Σ_i w_i ·
    term_i`, before the `1 − student_loss_weight` factor, as in
    `keras.distillation`), `total_loss`, and every term under its own name
    (parts of multi-part terms as `<term>_<part>`), beside the compiled
    metrics, which always measure the student's logits.

    Models may be unbuilt (e.g. subclassed and never called): they are built
    on the first batch, and the checks run then.

    Sample weights: the student loss keeps Keras' reduction; each term is
    reduced by `kd.losses.base.weighted_mean` (per-token terms: the mean
    over real tokens of a `(batch, length)` mask; README.md).

    Example:

    ```python
    distiller = kd.Distiller(
        teacher, student,
        [kd.losses.LogitsDistillation(temperature=4.0),
         kd.losses.FeatureAlignment("stage3", "stage3")],
        distillation_loss_weights=[1.0, 50.0], student_loss_weight=0.1)
    distiller.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True),
                      metrics=["accuracy"])
    distiller.fit(x, y, epochs=10)
    distiller.student.save("student.keras")
    ```
    """

    def __init__(
        self,
        teacher,
        student,
        distillation_losses,
        distillation_loss_weights=None,
        student_loss_weight=0.5,
        teacher_weights=None,
        weighting="convex",
        augmentation=None,
        stop_on_nonfinite_loss=True,
        evaluate_teacher=None,
        teacher_preprocessing=None,
        teacher_batch_statistics=False,
        name="distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        teachers = checks.as_list(teacher)
        checks.models(teachers, student)
        terms = checks.distillation_losses(distillation_losses)
        loss_weights = checks.loss_weights(distillation_loss_weights, terms)
        checks.student_loss_weight(student_loss_weight, weighting)
        teacher_weights = checks.teacher_weights(teacher_weights, teachers)
        self.teacher_batch_statistics = teacher_batch_statistics
        self._batch_statistics = checks.teacher_batch_statistics(
            teacher_batch_statistics, teachers
        )
        view_terms = checks.view_terms(terms)

        self.stop_on_nonfinite_loss = bool(stop_on_nonfinite_loss)
        self.teacher = teacher
        self.student = student
        for model in teachers:
            model.trainable = False
        self.distillation_losses = terms
        self.distillation_loss_weights = loss_weights
        self.student_loss_weight = float(student_loss_weight)
        self.weighting = weighting
        self.augmentation = augmentation
        self.teacher_preprocessing = teacher_preprocessing
        with DotNotTrackScope():  # Tracked once, as given.
            self._preprocessing = teacher_inputs.resolve(
                teacher_preprocessing, teachers
            )
        self.teacher_weights = teacher_weights
        self._teachers = teachers
        self._view_terms = view_terms
        self._num_views = view_terms[0].num_views if view_terms else 1
        self.evaluate_teacher = evaluate_teacher
        self._evaluate_teacher = checks.evaluate_teacher(
            evaluate_teacher, self.side_input_names, view_terms
        )
        self._evaluating = False
        self._taps_built = False
        self._create_trackers()
        if not any(_unbuilt(model) for model in teachers + [student]):
            self._build_taps_and_terms()

    def _create_trackers(self):
        """One tracker per term (repeated names get a suffix) and one per
        component of multi-part terms, beside the student, distillation and
        total loss."""
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.term_trackers = _distiller_trackers.term_trackers(self.distillation_losses)
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
        self._tracker_names = _distiller_trackers.tracker_names(self.term_trackers)

    @property
    def side_input_names(self):
        """The batch entries besides the images that the terms and teachers
        read (e.g. `["example_index"]` for CRD), sorted."""
        return sorted(
            {name for term in self.distillation_losses for name in term.side_inputs}
            | {
                name
                for model in self._teachers
                for name in getattr(model, "side_inputs", ())
            }
        )

    def _build_taps_and_terms(self):
        teacher_names = sorted(
            {n for term in self.distillation_losses for n in term.teacher_layer_names}
        )
        student_names = sorted(
            {n for term in self.distillation_losses for n in term.student_layer_names}
        )
        checks.input_shapes(
            self.student, self._teachers, self._view_terms, self._preprocessing
        )
        for model in self._teachers:
            if isinstance(model, RecordedTeacher):
                model.check_terms(self.distillation_losses, self.augmentation)
        # The taps share the models' layers and weights; they are not tracked
        # so the weights are saved once, under `teacher` and `student`.
        with DotNotTrackScope():
            self._student_tap, student_shapes = model_outputs.tap(
                self.student, student_names, "student"
            )
            teacher_taps = [
                model_outputs.tap(model, teacher_names, "teacher")
                for model in self._teachers
            ]
            self._teacher_taps = [tap for tap, _ in teacher_taps]
            self._batch_norms = [
                batch_statistics.batch_norm_layers(model) if flag else []
                for model, flag in zip(self._teachers, self._batch_statistics)
            ]
        teacher_shapes = [shapes for _, shapes in teacher_taps]
        model_outputs.check_student_head(self.student, self.distillation_losses)
        model_outputs.check_label_spaces(
            self.distillation_losses,
            self._teachers,
            teacher_shapes,
            student_shapes,
        )
        checks.sequence_logits(self.distillation_losses, student_shapes)
        for term in self.distillation_losses:
            if not term.built:  # Terms loaded from a .keras file are built.
                term.build(teacher_shapes, student_shapes)
        self._taps_built = True
        self.built = True

    def _build_models(self, inputs):
        """Builds unbuilt teachers and student on the first batch (as
        `keras.distillation` does), then the taps and terms, with the
        checks a built model gets at construction."""
        fed = self._preprocessing + [None]  # The student: its inputs.
        for model, transform in zip(self._teachers + [self.student], fed):
            if _unbuilt(model):
                model(teacher_inputs.apply(transform, inputs), training=False)
        self._build_taps_and_terms()

    # Each backend's `train_step` (TensorFlow, JAX, torch) calls `call`, then
    # `compute_loss`, then `compute_metrics`. Overriding those three keeps one
    # implementation for every backend while the backend keeps its own
    # gradient, optimizer, loss-scaling and distribution logic.
    def call(self, inputs, training=None):
        inputs = self._model_inputs(inputs, training)
        if not self._taps_built:
            self._build_models(inputs)
        if not training and not (self._evaluating and self._evaluate_teacher):
            outputs = self.student(inputs, training=training)
            return outputs["logits"] if isinstance(outputs, dict) else outputs
        if training:
            # Views first, so each view is augmented independently.
            for term in self._view_terms:
                inputs = term.transform_inputs(inputs, training=True)
            if self.augmentation is not None:
                inputs = self.augmentation(inputs, training=True)
        student_outputs = self._student_tap(inputs, training=bool(training))
        teacher_outputs = batch_statistics.run_teachers(
            self._teacher_taps, self._preprocessing, self._batch_norms, inputs, training
        )
        return {"student": student_outputs, "teachers": teacher_outputs}

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        if not _is_distillation_output(y_pred):
            return super().compute_loss(x, y, y_pred, sample_weight, training)
        student_outputs = y_pred["student"]
        teacher_outputs = self._teacher_outputs(
            x, y, y_pred["teachers"], student_outputs["logits"].shape
        )
        student_loss = self._student_loss(y, student_outputs, sample_weight)
        # Trackers are weighted by batch size like Keras' own `loss`, so the
        # epoch means of `loss` and `total_loss` agree.
        batch_size = ops.shape(next(i for i in keras.tree.flatten(x) if i is not None))[
            0
        ]
        distillation_loss = ops.zeros((), "float32")
        for term, weight, trackers in zip(
            self.distillation_losses,
            self.distillation_loss_weights,
            self.term_trackers,
        ):
            value = self._term_loss(
                term, x, y, teacher_outputs, student_outputs, training
            )
            parts = [value[part] for part in term.component_names]
            if parts:
                value = sum(parts)
            reduced = [self._reduce(v, sample_weight, term) for v in [value] + parts]
            for tracker, part in zip(trackers, reduced):
                tracker.update_state(part, sample_weight=batch_size)
            distillation_loss = distillation_loss + weight * reduced[0]
        scale = 1.0 - self.student_loss_weight if self.weighting == "convex" else 1.0
        total_loss = self.student_loss_weight * student_loss + scale * distillation_loss
        for loss in self.losses:
            total_loss = total_loss + ops.cast(ops.sum(loss), "float32")
        for tracker, value in (
            (self.student_loss_tracker, student_loss),
            (self.distillation_loss_tracker, distillation_loss),
            (self.total_loss_tracker, total_loss),
        ):
            tracker.update_state(value, sample_weight=batch_size)
        return scale_loss_for_distribution(total_loss)

    def _teacher_outputs(self, x, y, tapped, logits_shape):
        """Each teacher's outputs: its tap's, or those it reads off the batch
        (a `RecordedTeacher`) or off the labels (a `SoftLabelTeacher`, one
        per token for sequence logits)."""
        return [
            outputs
            if outputs is not None
            else model({name: x[name] for name in model.side_inputs})
            if isinstance(model, RecordedTeacher)
            else model(self._view_labels(y, logits_shape))
            for model, outputs in zip(self._teachers, tapped)
        ]

    def _student_loss(self, y, student_outputs, sample_weight):
        """The compiled supervised loss on the original view, in float32."""
        # Under `tf.distribute` Keras' compiled loss comes divided by the
        # number of replicas (the gradients are summed across them); every
        # term here is this replica's mean, so the total is scaled once, on
        # return, and the trackers see per-replica means.
        if self.student_loss_weight <= 0.0:
            return ops.zeros((), "float32")
        return unscale_loss_for_distribution(
            ops.cast(
                compiled_loss(self)(
                    y, self._labelled_logits(student_outputs), sample_weight
                ),
                "float32",
            )
        )

    def _term_loss(self, term, x, y, teacher_outputs, student_outputs, training):
        """One term's value, given the batch entries it reads."""
        side = {}
        if term.side_inputs:
            side["side_inputs"] = {name: x[name] for name in term.side_inputs}
        return term(
            teacher_outputs,
            student_outputs,
            labels=y,
            teacher_weights=self.teacher_weights,
            training=training,
            **side,
        )

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        distilling = _is_distillation_output(y_pred)
        if distilling:
            y_pred = self._labelled_logits(y_pred["student"])
        results = super().compute_metrics(x, y, y_pred, sample_weight)
        if not distilling:  # The student alone: no loss terms to report.
            results = {k: v for k, v in results.items() if k not in self._tracker_names}
        return results

    def _model_inputs(self, x, training):
        """The images of a batch whose terms read side inputs."""
        if not self.side_input_names:
            return x
        if isinstance(x, dict) and "inputs" in x:
            self._check_side_inputs(list(x))
            return x["inputs"]
        if training:
            self._check_side_inputs(None)
        return x  # Evaluation and prediction also take plain images.

    def _check_side_inputs(self, keys):
        readers = [t.name for t in self.distillation_losses if t.side_inputs]
        readers += [m.name for m in self._teachers if getattr(m, "side_inputs", ())]
        side_inputs.check(self.side_input_names, readers, keys)

    def _labelled_logits(self, student_outputs):
        """The student's logits on the original (first) view of the batch."""
        logits = student_outputs["logits"]
        if self._num_views == 1:
            return logits
        return logits[: ops.shape(logits)[0] // self._num_views]

    def _view_labels(self, y, logits_shape):
        labels = class_indices(y, logits_shape, "A kd.SoftLabelTeacher")
        return ops.concatenate([labels] * self._num_views, 0)

    def _reduce(self, value, sample_weight, term):
        """A term's value as a scalar (`kd.losses.base.weighted_mean`), the
        weights repeated for each view."""
        if sample_weight is not None and self._num_views > 1:
            sample_weight = ops.concatenate([sample_weight] * self._num_views, 0)
        return weighted_mean(value, sample_weight, term.name)

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """Compiles with the student's supervised `loss` (required when
        `student_loss_weight > 0`). A `mixed_float16` student gets a
        `LossScaleOptimizer` as in `keras.Model.compile`."""
        checks.supervised_loss(loss, self.student_loss_weight, self.student)
        optimizer = keras.optimizers.get(optimizer)
        if self.student.dtype_policy.name == "mixed_float16" and not isinstance(
            optimizer, keras.optimizers.LossScaleOptimizer
        ):
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        # Our `compile` takes Keras' arguments, so the saved ones restore it.
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.optimizer.build(self.trainable_variables)

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`; with `stop_on_nonfinite_loss` (the default),
        adds a `kd.callbacks.StopOnNonFiniteLoss` watching every term.

        Each term's `on_epoch_begin(epoch)` is called before every epoch
        (from `initial_epoch` on, so a resumed run continues its schedules).
        """
        x = args[0] if args else kwargs.get("x")
        if self.side_input_names:
            self._check_side_inputs(side_inputs.batch_keys(x))
        teacher_inputs.warn_if_normalised(self._teachers, self._preprocessing, x)
        callbacks = list(callbacks or []) + [
            callbacks_lib.TermEpochs(self.distillation_losses)
        ]
        if self.stop_on_nonfinite_loss:
            # First, so it raises before a checkpoint callback's epoch end.
            callbacks.insert(
                0,
                callbacks_lib.StopOnNonFiniteLoss(
                    sorted(self._tracker_names) + ["loss"]
                ),
            )
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def evaluate(self, *args, **kwargs):
        """`keras.Model.evaluate`. With `evaluate_teacher` (see the class),
        the teachers run too and every loss is reported as in training
        (`loss` is the total); otherwise the student alone is measured.
        `fit(validation_data=...)` evaluates through this method."""
        self._evaluating = True
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self._evaluating = False

    def get_config(self):
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config.update(
            {
                "teacher": checks.each(serialize, self.teacher),
                "student": serialize(self.student),
                "distillation_losses": [
                    serialize(term) for term in self.distillation_losses
                ],
                "distillation_loss_weights": self.distillation_loss_weights,
                "student_loss_weight": self.student_loss_weight,
                "teacher_weights": self.teacher_weights,
                "weighting": self.weighting,
                "augmentation": serialize(self.augmentation),
                "stop_on_nonfinite_loss": self.stop_on_nonfinite_loss,
                "evaluate_teacher": self.evaluate_teacher,
                "teacher_preprocessing": checks.each(
                    serialize, self.teacher_preprocessing
                ),
                "teacher_batch_statistics": self.teacher_batch_statistics,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        deserialize = keras.saving.deserialize_keras_object
        config["teacher"] = checks.each(deserialize, config["teacher"])
        config["teacher_preprocessing"] = checks.each(
            deserialize, config.get("teacher_preprocessing")
        )
        config["student"] = deserialize(config["student"])
        config["augmentation"] = deserialize(config.get("augmentation"))
        config["distillation_losses"] = [
            deserialize(term) for term in config["distillation_losses"]
        ]
        return cls(**config)


def _unbuilt(model):
    return isinstance(model, keras.Model) and not model.built


def _is_distillation_output(y_pred):
    return isinstance(y_pred, dict) and set(y_pred) == {"student", "teachers"}
