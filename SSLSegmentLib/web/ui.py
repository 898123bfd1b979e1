"""The page: a side panel with the loop's steps (Data, Label, Train, Results, Export) and
the slice views. Element ids name what the browser tests click."""

from __future__ import annotations

from trame.ui.vuetify3 import SinglePageWithDrawerLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v
from trame_slicer.app.ui import SegmentEditorUI

from ..catalogue import measured_figures
from ..round_settings import METHOD_CHOICES, NETWORK_CHOICES, PRESET_CHOICES

TABS = (("data", "Data"), ("label", "Label"), ("train", "Train"), ("results", "Results"), ("export", "Export"))
ROLE_ITEMS = ["labelled", "unlabelled", "excluded"]


def _method_item(name: str) -> dict:
    """A method list entry with what the bench measured for it (``sslsegment methods`` says
    what the figures mean)."""
    figures = measured_figures(name)
    return {"title": name, "value": name, **({"subtitle": f"gap closed: {figures}"} if figures else {})}


METHOD_ITEMS = [_method_item(name) for name in METHOD_CHOICES]
EXPORT_ITEMS = [{"title": "Slicer segmentation (.seg.nrrd)", "value": "seg.nrrd"},
                {"title": "Labelmap (.nrrd)", "value": "nrrd"}]


def build(app):
    """The layout of ``app`` (a :class:`SSLSegmentLib.web.app.WebApp`)."""
    with SinglePageWithDrawerLayout(app.server, theme="dark") as layout:
        layout.title.set_text("SSLSegment")
        layout.drawer.width = 470
        with layout.toolbar:
            v.VSpacer()
            html.Span("{{ train_text }}", id="toolbar-status", classes="text-caption mr-4")
            v.VSwitch(v_model=("show_3d",), label="3D (surfaces)", hide_details=True, density="compact",
                      id="toggle-3d", classes="mr-4", style="max-width: 180px;")
        with layout.drawer:
            _messages()
            with v.VTabs(v_model=("tab",), density="compact", grow=True):
                for key, title in TABS:
                    v.VTab(title, value=key, id=f"tab-{key}", style="min-width: 0;", classes="px-2")
            with html.Div(v_show="tab === 'data'", classes="pa-2"):
                _data_panel(app)
            with html.Div(v_show="tab === 'label'", classes="pa-2", style="height: 70vh;"):
                html.Div("Labels of {{ (volumes.find(r => r.id === selected) || {}).name }} "
                         "({{ showing }}): paint, erase, threshold, islands; undo/redo below.",
                         classes="text-caption mb-2")
                layout.segment_editor = SegmentEditorUI()
            with html.Div(v_show="tab === 'train'", classes="pa-2"):
                _train_panel(app)
            with html.Div(v_show="tab === 'results'", classes="pa-2"):
                _results_panel(app)
            with html.Div(v_show="tab === 'export'", classes="pa-2"):
                _export_panel(app)
        with layout.content:
            # Vuetify's layout variables: the views fill what the bars and the panel leave.
            with html.Div(id="views", style="position: absolute; top: var(--v-layout-top); "
                          "left: var(--v-layout-left); right: var(--v-layout-right); "
                          "bottom: var(--v-layout-bottom); display: flex;"):
                app.views.layout_manager.initialize_layout_grid(layout)
    return layout


def _messages():
    v.VAlert(v_if=("error",), text=("error",), type="error", density="compact", closable=True,
             id="error-text", classes="ma-2")
    v.VAlert(v_if=("message && !error",), text=("message",), type="info", density="compact",
             id="message-text", classes="ma-2")


def _data_panel(app):
    html.Div("Classes: {{ classes_text }}", classes="text-body-2 mb-2", id="classes-text")
    with v.VTable(density="compact", id="volume-table"):
        with html.Thead(), html.Tr():
            for title in ("Volume", "Role", "Labelled voxels", ""):
                html.Th(title)
        with html.Tbody():
            with html.Tr(v_for="row in volumes", key="row.id", id=("'row-' + row.name",),
                         classes=("row.id === selected ? 'bg-grey-darken-3' : ''",)):
                html.Td("{{ row.name }}")
                with html.Td(style="min-width: 140px;"):
                    v.VSelect(model_value=("row.role",), items=("roles", ROLE_ITEMS), density="compact",
                              hide_details=True, variant="plain",
                              update_modelValue=(app.on_set_role, "[row.id, $event]"))
                html.Td("{{ row.labelled_voxels }}", classes="voxels")
                with html.Td():
                    v.VBtn(icon="mdi-eye", size="small", variant="tonal", title="Open: show and label it",
                           id=("'open-' + row.name",), click=(app.on_select, "[row.id, 'labels']"))
    # The size bound is checked here first, so a too large upload is never sent.
    trigger = app.server.controller.trigger_name(app.on_upload)
    v.VFileInput(label="Add volumes (.nrrd, .nii.gz, .mha)", multiple=True, density="compact", classes="mt-3",
                 id="upload", prepend_icon="mdi-upload",
                 update_modelValue=("(($event || []).reduce((total, f) => total + f.size, 0) > max_upload_bytes)"
                                    " ? (error = `Upload refused: more than ${max_upload_bytes / 1048576} MiB at "
                                    "once (serve --max-upload-mb), or start the server on the folder (--images)`)"
                                    f" : trigger('{trigger}', [$event])"))


def _train_panel(app):
    v.VSelect(v_model=("method",), items=("methods", METHOD_ITEMS), item_props=True, label="Method",
              density="compact", id="method", persistent_hint=True,
              hint=("methods.find(m => m.value === method)?.subtitle || ''",))
    v.VSelect(v_model=("network",), items=("networks", list(NETWORK_CHOICES)), label="Network", density="compact")
    v.VSelect(v_model=("preset",), items=("presets", list(PRESET_CHOICES)), label="Preset", density="compact")
    v.VTextField(v_model_number=("iterations",), type="number", label="Iterations", density="compact",
                 id="iterations")
    with html.Div(classes="d-flex ga-2 mb-3"):
        v.VBtn("Train", color="primary", id="train-btn", disabled=("training",), click=app.on_train)
        v.VBtn("Cancel", color="error", id="cancel-btn", disabled=("!training",), click=app.on_cancel)
        v.VBtn("Resume round", id="resume-btn", v_show=("train_resumable && !training",), click=app.on_resume,
               title="Go on with the round where it stopped: from its last checkpoint, or only predicting")
    v.VProgressLinear(model_value=("train_fraction",), height=14, color="primary", id="train-progress",
                      striped=("training",))
    html.Div("{{ train_text }}", id="train-text", classes="text-body-2 mt-2")
    html.Div("ETA {{ train_eta }} · loss {{ train_loss === null ? '-' : train_loss.toFixed(4) }}"
             " · val Dice {{ train_dice === null ? '-' : train_dice.toFixed(3) }}",
             id="train-figures", classes="text-caption")
    _past_rounds_table(app)


def _past_rounds_table(app):
    """Jobs of earlier sessions (the server restarted): open one for its results or to resume it."""
    html.Div("Past rounds", classes="text-subtitle-2 mt-4")
    html.Div("No earlier round in the jobs folder", v_if=("!past_rounds.length",), classes="text-caption")
    with v.VTable(density="compact", id="past-rounds-table", v_if=("past_rounds.length",)):
        with html.Thead(), html.Tr():
            for title in ("Job", "Round", "Method", "State", ""):
                html.Th(title)
        with html.Tbody():
            with html.Tr(v_for="row in past_rounds", key="row.folder", id=("'past-' + row.name",)):
                html.Td("{{ row.name }}", classes="text-caption")
                html.Td("{{ row.round }}")
                html.Td("{{ row.method }}")
                html.Td("{{ row.state }}{{ row.resumable ? ' (can resume)' : '' }}")
                with html.Td():
                    v.VBtn(icon="mdi-folder-open", size="small", variant="tonal", disabled=("training",),
                           title="Open this round: its results, or Resume round", id=("'open-round-' + row.name",),
                           click=(app.on_open_round, "[row.folder]"))


def _results_panel(app):
    html.Div("Predictions of round {{ round }}, least confident first. Open one, correct it with the "
             "Label tools, mark it corrected, then retrain from the last model.", classes="text-caption mb-2")
    with v.VTable(density="compact", id="results-table"):
        with html.Thead(), html.Tr():
            for title in ("Volume", "Confidence", "Corrected", ""):
                html.Th(title)
        with html.Tbody():
            with html.Tr(v_for="row in results", key="row.id", id=("'result-' + row.name",)):
                html.Td("{{ row.name }}")
                html.Td("{{ row.confidence === null ? '-' : row.confidence.toFixed(3) }}")
                html.Td("{{ row.corrected ? 'yes' : 'no' }}")
                with html.Td(classes="text-no-wrap"):
                    v.VBtn(icon="mdi-eye", size="small", variant="tonal", title="Open the prediction to correct it",
                           id=("'show-' + row.name",), click=(app.on_select, "[row.id, 'prediction']"))
                    v.VBtn(icon="mdi-check", size="small", variant="tonal", classes="ml-1",
                           title="Mark corrected: it then trains as a label", id=("'correct-' + row.name",),
                           click=(app.on_mark_corrected, "[row.id]"))
    v.VBtn("Retrain with corrections", color="primary", id="retrain-btn", classes="mt-3",
           disabled=("training || !results.some(r => r.corrected)",), click=app.on_retrain)


def _export_panel(app):
    v.VSelect(v_model=("export_format",), items=("export_items", EXPORT_ITEMS), label="Format",
              density="compact")
    trigger = app.server.controller.trigger_name(app.on_export)
    v.VBtn("Export and download", color="primary", id="export-btn", disabled=("!results.length",),
           click=f"utils.download('sslsegment-export.zip', trigger('{trigger}'), 'application/zip')")
    html.Div("Written on the server to {{ export_folder }}", v_if=("export_folder",), id="export-folder",
             classes="text-caption mt-2")
