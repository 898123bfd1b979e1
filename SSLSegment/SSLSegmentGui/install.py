"""Install the engine's Python requirements inside Slicer, with versions, progress and restart.

torch comes from the PyTorch extension (PyTorchUtils picks the build that matches the GPU)
when it is installed, else from pip. The other requirements go through
``slicer.pydeps.pip_ensure`` (Slicer 5.11+: version check, confirmation, progress dialog,
restart prompt); on older Slicer the same steps are done here with
:mod:`SSLSegmentLib.dependencies`. Requirements: ``Resources/requirements.txt``, generated
from ``pyproject.toml``.
"""

import importlib

import slicer
from slicer.i18n import tr as _

from SSLSegmentLib import dependencies

REQUESTER = "SSLSegment"


def ensureDependencies(requirementsPath) -> bool:
    """True when every requirement is met (after installing what the user agreed to)."""
    requirements = dependencies.readRequirements(requirementsPath)
    torchRequirement = next((r for r in requirements if dependencies.isTorch(r)), "torch")
    if not ensureTorch(torchRequirement):
        return False
    others = [r for r in requirements if not dependencies.isTorch(r)]
    pipEnsure = _slicerPipEnsure()
    if pipEnsure is not None:
        from packaging.requirements import Requirement

        wanted = [Requirement(r) for r in others if not dependencies.isBundled(dependencies.requirementName(r))]
        try:
            pipEnsure(wanted, requester=REQUESTER)
        except RuntimeError:  # the user declined
            return False
        return not dependencies.unmetRequirements(others)
    return _installUnmet(dependencies.unmetRequirements(others))


def _slicerPipEnsure():
    """``pip_ensure`` of this Slicer (``slicer.pydeps``, 5.11+; ``slicer.packaging`` on some builds)."""
    for name in ("slicer.pydeps", "slicer.packaging"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "pip_ensure"):
            return module.pip_ensure
    return None


def ensureTorch(requirement: str) -> bool:
    unmet = dependencies.unmetRequirements([requirement])
    if not unmet:
        return True
    versionSpec = requirement[len(dependencies.requirementName(requirement)):].strip()
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        PyTorchUtils = None
    if PyTorchUtils is not None and unmet[0].installed is None:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True,
                                                                torchVersionRequirement=versionSpec)
        return torch is not None
    return _installUnmet(unmet, _(
        "Installing the PyTorch extension first picks the PyTorch build that matches your GPU."))


def _installUnmet(unmet, note: str = "") -> bool:
    """Ask, pip-install with a progress dialog, and offer a restart when an upgrade needs one."""
    if not unmet:
        return True
    lines = "\n".join(f"  {item.describe()}" for item in unmet)
    question = _("SSLSegment needs these Python packages:\n{lines}\n\nInstall them now?").format(lines=lines)
    if not slicer.util.confirmOkCancelDisplay(question + (f"\n\n{note}" if note else "")):
        return False
    restartNeeded = dependencies.needsRestart(unmet)
    progress = slicer.util.createProgressDialog(
        windowTitle=_("SSLSegment"), labelText=_("Installing {packages}...").format(
            packages=", ".join(item.name for item in unmet)), maximum=0)  # maximum 0: busy indicator
    slicer.app.processEvents()
    try:
        slicer.util.pip_install([item.requirement for item in unmet])
    finally:
        progress.close()
    if restartNeeded and slicer.util.confirmYesNoDisplay(_(
            "{packages} were upgraded while an older version is loaded. Restart Slicer now? Training runs in a "
            "new process and uses the new version either way.").format(packages=", ".join(restartNeeded))):
        slicer.util.restart()
    still = dependencies.unmetRequirements([item.requirement for item in unmet])
    if still:
        slicer.util.errorDisplay(_("Installation did not satisfy: {items}").format(
            items=", ".join(item.describe() for item in still)))
    return not still
