// citygate console: the clip player (an MJPEG clip shown frame by frame) and confirmations.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (ev) => {
      if (!window.confirm(form.dataset.confirm)) ev.preventDefault();
    });
  }
  for (const clip of document.querySelectorAll("figure.clip")) {
    const img = clip.querySelector("img");
    const range = clip.querySelector("input[type=range]");
    const label = clip.querySelector(".frame");
    const button = clip.querySelector("button.play");
    const count = Number(clip.dataset.count);
    const period = 1000 / Math.max(0.5, Number(clip.dataset.fps) || 2);
    const frames = [];
    let shown = 0, timer = null;
    const show = (i) => {
      shown = i;
      if (!frames[i]) { frames[i] = new Image(); frames[i].src = clip.dataset.frames + i + ".jpg"; }
      img.src = frames[i].src;
      range.value = i;
      label.textContent = (i + 1) + " / " + count;
    };
    const stop = () => { clearInterval(timer); timer = null; button.textContent = "▶ play"; };
    button.addEventListener("click", () => {
      if (timer) { stop(); return; }
      for (let i = 0; i < count; i++) if (!frames[i]) { frames[i] = new Image(); frames[i].src = clip.dataset.frames + i + ".jpg"; }
      button.textContent = "❚❚ pause";
      timer = setInterval(() => show((shown + 1) % count), period);
    });
    range.addEventListener("input", () => { stop(); show(Number(range.value)); });
  }
});
