"""Presets of the relational and distribution terms: RKD, PKT, SP, CC, NST.

Defaults are the official CIFAR-100 settings of mdistiller
(`mdistiller/engine/cfg.py`) and RepDistiller (`train_student.py`,
`helper/loops.py`, `scripts/run_cifar_distill.sh`): cross-entropy weight 1
and no Hinton KD term (`-r 1 -a 0`). The layers are those the official
loops tap on the zoo models: the pooled `features` vector (RKD, PKT, CC),
the last stage (SP) and every stage after the stem (NST).
"""

from keras_kd import losses
from keras_kd.models import stage_layer_names
from keras_kd.presets.registry import register


def _stages(model):
    """The zoo model's stage outputs without the stem."""
    return [name for name in stage_layer_names(model) if name != "stem"]


def _features(teacher, student):
    """The pooled `features` vector of both models."""
    return "features", "features"


def _last_stages(teacher, student):
    """The last stage of both models."""
    return _stages(teacher)[-1], _stages(student)[-1]


def _paired_stages(teacher, student):
    """Every stage, paired from the first as the official `zip`: the extra
    ones of the deeper model are left out."""
    teacher_stages, student_stages = _stages(teacher), _stages(student)
    pairs = min(len(teacher_stages), len(student_stages))
    return teacher_stages[:pairs], student_stages[:pairs]


def _preset(name, term_class, layers, **registration):
    """Registers `name`: `term_class` on `layers(teacher, student)`,
    weighted by `<name>_weight`; each other `<name>_<arg>` default is the
    term's `arg`."""
    prefix = f"{name}_"

    def builder(teachers, student, **values):
        options = {key[len(prefix) :]: v for key, v in values.items()}
        weight = options.pop("weight")
        term = term_class(*layers(teachers[0], student), name=name, **options)
        return [(name, term, weight)]

    register(name, student_loss_weight=1.0, **registration)(builder)


_preset(
    "rkd",
    losses.RelationalKnowledgeDistillation,
    _features,
    help="Relational KD: distance + angle relations of pooled features "
    "(Park et al., CVPR 2019).",
    reference="mdistiller: mdistiller/distillers/RKD.py; engine/cfg.py "
    "(CFG.RKD); RepDistiller: distiller_zoo/RKD.py, -b 1",
    defaults={"rkd_weight": 1.0, "rkd_distance_weight": 25.0, "rkd_angle_weight": 50.0},
)

_preset(
    "pkt",
    losses.ProbabilisticKnowledgeTransfer,
    _features,
    help="Probabilistic knowledge transfer: cosine-kernel similarity "
    "distributions of pooled features (Passalis & Tefas, ECCV 2018).",
    reference="mdistiller: mdistiller/distillers/PKT.py; engine/cfg.py "
    "(CFG.PKT); RepDistiller: distiller_zoo/PKT.py, -b 30000",
    defaults={"pkt_weight": 30000.0},
)

_preset(
    "sp",
    losses.SimilarityPreserving,
    _last_stages,
    help="Similarity-preserving KD: batch Gram matrices of the last stage "
    "(Tung & Mori, ICCV 2019).",
    reference="mdistiller: mdistiller/distillers/SP.py; engine/cfg.py "
    "(CFG.SP); RepDistiller: distiller_zoo/SP.py, -b 3000",
    defaults={"sp_weight": 3000.0},
)

_preset(
    "cc",
    losses.CorrelationCongruence,
    _features,
    help="Correlation congruence: inter-sample correlations of embedded "
    "pooled features (Peng et al., ICCV 2019).",
    reference="RepDistiller: distiller_zoo/CC.py; train_student.py "
    "(LinearEmbed, --feat_dim 128); scripts/run_cifar_distill.sh "
    "-b 0.02",
    defaults={
        "cc_weight": 0.02,
        "cc_formulation": "repdistiller",
        "cc_embedding_dim": 128,
    },
)

_preset(
    "nst",
    losses.NeuronSelectivityTransfer,
    _paired_stages,
    help="Neuron selectivity transfer: polynomial-kernel MMD of every "
    "stage's channel maps (Huang & Wang, 2017).",
    reference="mdistiller: mdistiller/distillers/NST.py; engine/cfg.py "
    "(CFG.NST); RepDistiller: distiller_zoo/NST.py, -b 50",
    defaults={"nst_weight": 50.0},
)
