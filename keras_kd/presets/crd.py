"""CRD presets (Tian et al., ICLR 2020; RepDistiller's CIFAR-100 recipe)."""

from keras_kd import losses
from keras_kd.presets.registry import register


@register(
    "crd",
    help="Contrastive representation distillation: NCE between student and "
    "teacher embeddings against memory banks (Tian et al., ICLR 2020).",
    reference="HobbitLong/RepDistiller: crd/criterion.py, crd/memory.py, "
    "train_student.py (--nce_k 16384 --nce_t 0.07 --nce_m 0.5 --feat_dim "
    "128, -r 1 -a 0 -b 0.8, --mode exact), dataset/cifar100.py "
    "(CIFAR100InstanceSample: other-class negatives); mdistiller "
    "configs/cifar100/crd.yaml",
    defaults={
        "num_data": 50000,
        "feat_dim": 128,
        "num_negatives": 16384,
        "temperature": 0.07,
        "momentum": 0.5,
        "weight": 0.8,
        "negatives": "exact",
        "labels": None,
    },
    student_loss_weight=1.0,
)
def _crd(
    teachers,
    student,
    num_data,
    feat_dim,
    num_negatives,
    temperature,
    momentum,
    weight,
    negatives,
    labels,
):
    """CRD on the pooled `"features"` of one teacher and the student.

    `num_data` is the number of training images (CIFAR-100: 50 000); fit
    with `x=kd.data.with_example_index(images)`. Negatives from other
    classes (`"exact"`, RepDistiller's default), from the training `labels`
    when given (else learnt from the batches' `y`), or `"uniform"`.
    """
    if len(teachers) != 1:
        raise ValueError(f"The 'crd' preset distils one teacher, got {len(teachers)}.")
    term = losses.ContrastiveRepresentation(
        num_data=num_data,
        feat_dim=feat_dim,
        num_negatives=num_negatives,
        temperature=temperature,
        momentum=momentum,
        negatives=negatives,
        labels=labels,
        name="crd",
    )
    return [("crd", term, weight)]
