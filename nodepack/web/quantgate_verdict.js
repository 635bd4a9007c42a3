// quantgate node pack: show QGCheckModel's verdict (the node's ui.text) as read-only text on the node.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

app.registerExtension({
  name: "quantgate.CheckModelVerdict",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "QGCheckModel") return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = (message?.text ?? []).join("\n");
      let w = this.widgets?.find((x) => x.name === "quantgate_verdict");
      if (!w) {
        w = ComfyWidgets.STRING(this, "quantgate_verdict", ["STRING", { multiline: true }], app).widget;
        if (w.inputEl) {
          w.inputEl.readOnly = true;
          w.inputEl.style.fontFamily = "monospace";
        }
        w.serialize = false;        // the verdict is output, never saved as an input of the workflow
      }
      w.value = text;
      this.setSize?.([Math.max(this.size[0], 420), Math.max(this.size[1], 260)]);
      app.graph?.setDirtyCanvas(true, true);
    };
  },
});
