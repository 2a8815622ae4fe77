"""The task's 70 artifact names, grouped, described for prompts, and gated by object class.

The names are the task's class names, verbatim and in the task's order (``../shared/data/artifacts.txt``;
the test suite checks them against that file). Each carries a group, a short description that the
CLIP prompts and the Idefics2 prompt use, and the object kinds it can apply to: paw and fur
artifacts do not apply to a truck, and wheel geometry does not apply to a frog.

Object classes are the ten CIFAR-10 classes (the detector's world) plus a few that the 256x256
images need (person, other animal, other object, scene); each maps to a set of *kinds*, and an
artifact applies to a class when their kinds intersect, or always when the artifact is
class-agnostic.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ARTIFACTS",
    "ARTIFACT_NAMES",
    "BY_NAME",
    "GROUPS",
    "OBJECT_CLASSES",
    "Artifact",
    "applicable",
    "artifact",
]

GROUPS = (
    "anatomy",
    "materials and geometry",
    "mechanical and aerodynamic",
    "proportion and scale",
    "edges and boundaries",
    "texture",
    "lighting and shadow",
    "depth and perspective",
    "colour",
    "stylistic and cinematic",
)

# Object class -> kinds. The prompt text is what the zero-shot CLIP gate compares the image with.
OBJECT_CLASSES: dict[str, frozenset[str]] = {
    "airplane": frozenset({"vehicle", "aircraft", "rigid"}),
    "automobile": frozenset({"vehicle", "road vehicle", "wheels", "rigid"}),
    "bird": frozenset({"animal", "feathers"}),
    "cat": frozenset({"animal", "mammal", "fur", "paws"}),
    "deer": frozenset({"animal", "mammal", "fur"}),
    "dog": frozenset({"animal", "mammal", "fur", "paws"}),
    "frog": frozenset({"animal"}),
    "horse": frozenset({"animal", "mammal", "fur"}),
    "ship": frozenset({"vehicle", "rigid"}),
    "truck": frozenset({"vehicle", "road vehicle", "wheels", "rigid"}),
    "person": frozenset({"person", "skin"}),
    "other animal": frozenset({"animal"}),
    "other object": frozenset({"rigid"}),
    "scene": frozenset(),
}

ANIMATE = frozenset({"animal", "person"})
MECHANICAL = frozenset({"vehicle"})
RIGID = frozenset({"rigid"})


@dataclass(frozen=True)
class Artifact:
    """One artifact class of the task.

    Attributes:
        name: the task's name, verbatim.
        group: one of :data:`GROUPS`.
        description: what the artifact looks like, one clause, used in prompts.
        kinds: object kinds it applies to; empty means any image.
    """

    name: str
    group: str
    description: str
    kinds: frozenset[str] = frozenset()

    @property
    def class_agnostic(self) -> bool:
        return not self.kinds

    def applies_to(self, object_class: str | None) -> bool:
        """Whether the artifact can occur on an image of ``object_class`` (None: unknown class,
        where only class-agnostic artifacts are safe to name)."""
        if not self.kinds:
            return True
        if object_class is None:
            return False
        return bool(self.kinds & OBJECT_CLASSES.get(object_class, frozenset()))


def _a(name: str, group: str, description: str, kinds: frozenset[str] | set[str] = frozenset()) -> Artifact:
    return Artifact(name, group, description, frozenset(kinds))


# In the task's order (artifacts.txt), which the tests check.
ARTIFACTS: tuple[Artifact, ...] = (
    _a(
        "Inconsistent object boundaries",
        "edges and boundaries",
        "object outlines that waver, break or merge into the background",
    ),
    _a(
        "Discontinuous surfaces",
        "materials and geometry",
        "a surface that breaks off or jumps where it should continue smoothly",
    ),
    _a(
        "Non-manifold geometries in rigid structures",
        "materials and geometry",
        "rigid parts that intersect, fold into each other or cannot exist in 3D",
        RIGID,
    ),
    _a(
        "Floating or disconnected components",
        "materials and geometry",
        "parts that hover or are detached from the object they belong to",
    ),
    _a(
        "Asymmetric features in naturally symmetric objects",
        "proportion and scale",
        "left and right halves of a symmetric object that do not match",
    ),
    _a(
        "Misaligned bilateral elements in animal faces",
        "anatomy",
        "eyes, ears or nostrils of an animal face at different heights or sizes",
        {"animal"},
    ),
    _a(
        "Irregular proportions in mechanical components",
        "mechanical and aerodynamic",
        "machine parts too large, too small or oddly shaped for their role",
        MECHANICAL,
    ),
    _a(
        "Texture bleeding between adjacent regions",
        "texture",
        "the texture of one region spilling over into its neighbour",
    ),
    _a("Texture repetition patterns", "texture", "the same texture patch repeated like a stamp"),
    _a(
        "Over-smoothing of natural textures",
        "texture",
        "fur, foliage, skin or ground rendered waxy and without fine grain",
    ),
    _a(
        "Artificial noise patterns in uniform surfaces",
        "texture",
        "structured noise or speckle on surfaces that should be plain",
    ),
    _a(
        "Unrealistic specular highlights",
        "lighting and shadow",
        "highlights too bright, too many or in places the light cannot reach",
    ),
    _a(
        "Inconsistent material properties",
        "materials and geometry",
        "one object that looks like different materials in different places",
    ),
    _a(
        "Metallic surface artifacts",
        "materials and geometry",
        "metal with smeared, blotchy or implausible reflections",
        RIGID,
    ),
    _a(
        "Dental anomalies in mammals",
        "anatomy",
        "teeth that are missing, doubled, fused or in the wrong place",
        {"mammal"},
    ),
    _a(
        "Anatomically incorrect paw structures",
        "anatomy",
        "paws with the wrong number of toes, fused toes or impossible bends",
        {"paws"},
    ),
    _a(
        "Improper fur direction flows",
        "anatomy",
        "fur that grows in directions that swirl or contradict the body's shape",
        {"fur"},
    ),
    _a(
        "Unrealistic eye reflections",
        "anatomy",
        "catchlights in the two eyes that differ or do not match the light",
        ANIMATE,
    ),
    _a(
        "Misshapen ears or appendages", "anatomy", "ears, limbs, tails or horns with the wrong shape or number", ANIMATE
    ),
    _a(
        "Impossible mechanical connections",
        "mechanical and aerodynamic",
        "parts joined in ways that could not transmit force or move",
        MECHANICAL,
    ),
    _a(
        "Inconsistent scale of mechanical parts",
        "proportion and scale",
        "wheels, engines or windows at sizes that do not match each other",
        MECHANICAL,
    ),
    _a(
        "Physically impossible structural elements",
        "materials and geometry",
        "supports, beams or hulls that could not bear their load",
        RIGID,
    ),
    _a(
        "Inconsistent shadow directions",
        "lighting and shadow",
        "shadows cast in directions that disagree with each other",
    ),
    _a(
        "Multiple light source conflicts",
        "lighting and shadow",
        "shading that implies several incompatible light sources",
    ),
    _a(
        "Missing ambient occlusion", "lighting and shadow", "no darkening in creases and where objects touch the ground"
    ),
    _a(
        "Incorrect reflection mapping", "lighting and shadow", "reflections that do not show what surrounds the surface"
    ),
    _a(
        "Incorrect perspective rendering",
        "depth and perspective",
        "lines and surfaces that do not converge to consistent vanishing points",
    ),
    _a(
        "Scale inconsistencies within single objects",
        "proportion and scale",
        "parts of one object at sizes that do not fit together",
    ),
    _a(
        "Spatial relationship errors",
        "depth and perspective",
        "objects placed in positions that cannot coexist in space",
    ),
    _a(
        "Depth perception anomalies",
        "depth and perspective",
        "cues to depth (size, blur, occlusion) that contradict each other",
    ),
    _a(
        "Over-sharpening artifacts",
        "edges and boundaries",
        "halos and overshoot along edges as from a strong sharpening filter",
    ),
    _a(
        "Aliasing along high-contrast edges",
        "edges and boundaries",
        "stair-stepping or ringing where bright meets dark",
    ),
    _a(
        "Blurred boundaries in fine details",
        "edges and boundaries",
        "small details whose outlines are soft while larger ones are crisp",
    ),
    _a("Jagged edges in curved structures", "edges and boundaries", "curves rendered as jagged, stepped segments"),
    _a(
        "Random noise patterns in detailed areas",
        "texture",
        "noise that is not sensor grain scattered over detailed regions",
    ),
    _a("Loss of fine detail in complex structures", "texture", "intricate structures reduced to smudges"),
    _a(
        "Artificial enhancement artifacts",
        "stylistic and cinematic",
        "the over-processed look of boosted contrast, clarity and saturation",
    ),
    _a(
        "Incorrect wheel geometry",
        "mechanical and aerodynamic",
        "wheels that are not round, not aligned or with broken spokes",
        {"wheels"},
    ),
    _a(
        "Implausible aerodynamic structures",
        "mechanical and aerodynamic",
        "wings, fins or body shapes that could not fly or move through air",
        {"aircraft", "road vehicle"},
    ),
    _a(
        "Misaligned body panels",
        "mechanical and aerodynamic",
        "car or truck panels whose gaps and lines do not meet",
        {"road vehicle"},
    ),
    _a(
        "Impossible mechanical joints",
        "mechanical and aerodynamic",
        "hinges and joints that could not articulate",
        MECHANICAL,
    ),
    _a(
        "Distorted window reflections",
        "materials and geometry",
        "windows and windshields whose reflections are warped or smeared",
        MECHANICAL,
    ),
    _a(
        "Anatomically impossible joint configurations",
        "anatomy",
        "limbs bent at joints in ways the skeleton does not allow",
        ANIMATE,
    ),
    _a("Unnatural pose artifacts", "anatomy", "a body posture that no living creature would hold", ANIMATE),
    _a(
        "Biological asymmetry errors",
        "anatomy",
        "a body whose left and right sides differ where nature makes them alike",
        ANIMATE,
    ),
    _a(
        "Regular grid-like artifacts in textures",
        "texture",
        "a faint periodic grid over the image, as left by upsampling layers",
    ),
    _a("Repeated element patterns", "texture", "the same small element copied several times"),
    _a(
        "Systematic color distribution anomalies",
        "colour",
        "a colour histogram unlike a camera's: shifted, narrow or banded",
    ),
    _a(
        "Frequency domain signatures",
        "texture",
        "energy at particular spatial frequencies that camera images do not have",
    ),
    _a("Color coherence breaks", "colour", "colours that change abruptly inside a region that should be uniform"),
    _a("Unnatural color transitions", "colour", "gradients between colours that are too smooth or stepped"),
    _a("Resolution inconsistencies within regions", "texture", "some regions crisp and others soft at the same depth"),
    _a("Unnatural Lighting Gradients", "lighting and shadow", "brightness falling off in a way no real light produces"),
    _a("Incorrect Skin Tones", "colour", "skin with a waxy, grey or oversaturated hue", {"skin"}),
    _a("Fake depth of field", "depth and perspective", "background blur that does not follow distance from the camera"),
    _a(
        "Abruptly cut off objects",
        "edges and boundaries",
        "objects that end suddenly without being occluded or framed out",
    ),
    _a(
        "Glow or light bleed around object boundaries",
        "lighting and shadow",
        "a bright halo hugging an object's outline",
    ),
    _a(
        "Ghosting effects: Semi-transparent duplicates of elements",
        "edges and boundaries",
        "faint see-through copies of edges or parts",
    ),
    _a(
        "Cinematization Effects",
        "stylistic and cinematic",
        "film-like grading, vignetting and contrast on an everyday scene",
    ),
    _a(
        "Excessive sharpness in certain image regions",
        "edges and boundaries",
        "a few regions far sharper than the rest of the image",
    ),
    _a("Artificial smoothness", "texture", "surfaces with almost no fine-scale variation, as if airbrushed"),
    _a(
        "Movie-poster like composition of ordinary scenes",
        "stylistic and cinematic",
        "a centred, dramatic, staged framing of a mundane subject",
    ),
    _a(
        "Dramatic lighting that defies natural physics",
        "lighting and shadow",
        "strong contrast and rim light with no plausible source",
    ),
    _a(
        "Artificial depth of field in object presentation",
        "depth and perspective",
        "a sharp subject on a uniformly blurred backdrop, like a product shot",
    ),
    _a("Unnaturally glossy surfaces", "materials and geometry", "surfaces shinier than their material allows"),
    _a(
        "Synthetic material appearance",
        "materials and geometry",
        "materials that look like plastic or render rather than the real thing",
    ),
    _a(
        "Multiple inconsistent shadow sources",
        "lighting and shadow",
        "several shadows of one object pointing different ways",
    ),
    _a(
        "Exaggerated characteristic features",
        "stylistic and cinematic",
        "typical features of the subject enlarged or intensified, like a caricature",
    ),
    _a(
        "Impossible foreshortening in animal bodies",
        "anatomy",
        "animal bodies whose near and far parts do not shrink consistently",
        {"animal"},
    ),
    _a(
        "Scale inconsistencies within the same object class",
        "proportion and scale",
        "several objects of one kind at sizes that do not fit the scene",
    ),
)

ARTIFACT_NAMES: tuple[str, ...] = tuple(a.name for a in ARTIFACTS)
BY_NAME: dict[str, Artifact] = {a.name: a for a in ARTIFACTS}


def artifact(name: str) -> Artifact:
    """The artifact called ``name``; raises KeyError for a name outside the taxonomy."""
    return BY_NAME[name]


def applicable(object_class: str | None) -> tuple[Artifact, ...]:
    """The artifacts that can occur on an image of ``object_class`` (None: class-agnostic only)."""
    return tuple(a for a in ARTIFACTS if a.applies_to(object_class))
