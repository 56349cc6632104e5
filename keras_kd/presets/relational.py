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


@register(
    "rkd",
    help="Relational KD: distance + angle relations of pooled features "
         "(Park et al., CVPR 2019).",
    reference="mdistiller: mdistiller/distillers/RKD.py; engine/cfg.py "
              "(CFG.RKD); RepDistiller: distiller_zoo/RKD.py, -b 1",
    defaults={"rkd_weight": 1.0, "rkd_distance_weight": 25.0,
              "rkd_angle_weight": 50.0},
    student_loss_weight=1.0,
)
def _rkd(teachers, student, rkd_weight, rkd_distance_weight,
         rkd_angle_weight):
    term = losses.RelationalKnowledgeDistillation(
        "features", "features", distance_weight=rkd_distance_weight,
        angle_weight=rkd_angle_weight, name="rkd")
    return [("rkd", term, rkd_weight)]


@register(
    "pkt",
    help="Probabilistic knowledge transfer: cosine-kernel similarity "
         "distributions of pooled features (Passalis & Tefas, ECCV 2018).",
    reference="mdistiller: mdistiller/distillers/PKT.py; engine/cfg.py "
              "(CFG.PKT); RepDistiller: distiller_zoo/PKT.py, -b 30000",
    defaults={"pkt_weight": 30000.0},
    student_loss_weight=1.0,
)
def _pkt(teachers, student, pkt_weight):
    term = losses.ProbabilisticKnowledgeTransfer(
        "features", "features", name="pkt")
    return [("pkt", term, pkt_weight)]


@register(
    "sp",
    help="Similarity-preserving KD: batch Gram matrices of the last stage "
         "(Tung & Mori, ICCV 2019).",
    reference="mdistiller: mdistiller/distillers/SP.py; engine/cfg.py "
              "(CFG.SP); RepDistiller: distiller_zoo/SP.py, -b 3000",
    defaults={"sp_weight": 3000.0},
    student_loss_weight=1.0,
)
def _sp(teachers, student, sp_weight):
    term = losses.SimilarityPreserving(
        _stages(teachers[0])[-1], _stages(student)[-1], name="sp")
    return [("sp", term, sp_weight)]


@register(
    "cc",
    help="Correlation congruence: inter-sample correlations of embedded "
         "pooled features (Peng et al., ICCV 2019).",
    reference="RepDistiller: distiller_zoo/CC.py; train_student.py "
              "(LinearEmbed, --feat_dim 128); scripts/run_cifar_distill.sh "
              "-b 0.02",
    defaults={"cc_weight": 0.02, "cc_formulation": "repdistiller",
              "cc_embedding_dim": 128},
    student_loss_weight=1.0,
)
def _cc(teachers, student, cc_weight, cc_formulation, cc_embedding_dim):
    term = losses.CorrelationCongruence(
        "features", "features", formulation=cc_formulation,
        embedding_dim=cc_embedding_dim, name="cc")
    return [("cc", term, cc_weight)]


@register(
    "nst",
    help="Neuron selectivity transfer: polynomial-kernel MMD of every "
         "stage's channel maps (Huang & Wang, 2017).",
    reference="mdistiller: mdistiller/distillers/NST.py; engine/cfg.py "
              "(CFG.NST); RepDistiller: distiller_zoo/NST.py, -b 50",
    defaults={"nst_weight": 50.0},
    student_loss_weight=1.0,
)
def _nst(teachers, student, nst_weight):
    teacher_stages, student_stages = _stages(teachers[0]), _stages(student)
    # As the official `zip`: stages pair from the first, the extra ones of
    # the deeper model are left out.
    pairs = min(len(teacher_stages), len(student_stages))
    term = losses.NeuronSelectivityTransfer(
        teacher_stages[:pairs], student_stages[:pairs], name="nst")
    return [("nst", term, nst_weight)]
