// citygate console map: draws /api/map (GeoJSON in the map's CRS) with the vendored Leaflet.
// No tile is requested unless the deployment configured its own tile server (web.map_tiles).
"use strict";
(function () {
  const el = document.getElementById("map");
  if (!el || !window.L) return;
  const STYLE = {
    grid: {color: "#8a97a6", weight: 1, fill: false, dashArray: "3 3"},
    zones: {color: "#c0392b", weight: 2, fillColor: "#e74c3c", fillOpacity: 0.15},
    sites: {color: "#2e5fb8", weight: 2, fillColor: "#4a7bd0", fillOpacity: 0.15},
    routes: {color: "#2e8b3a", weight: 4, opacity: 0.7},
    roads: {color: "#96702a", weight: 3, opacity: 0.7},
    tracks: {color: "#1e3cc8", weight: 2, opacity: 0.8},
  };
  const POINT = {
    cameras: {radius: 6, color: "#5b2c83", fillColor: "#8e44ad", fillOpacity: 0.9},
    sensors: {radius: 6, color: "#0e6b73", fillColor: "#16a5b0", fillOpacity: 0.9},
    vehicles: {radius: 7, color: "#12236e", fillColor: "#1e3cc8", fillOpacity: 1},
    cases: {radius: 8, color: "#8a1c12", fillColor: "#e3342f", fillOpacity: 0.85},
  };
  const TITLES = {grid: "grid", zones: "forbidden zones", sites: "sites", routes: "routes", roads: "roads",
                  cameras: "cameras", sensors: "sensors", vehicles: "vehicles", tracks: "tracks", cases: "cases (24 h)"};
  const text = (v) => (v === undefined || v === null ? "" : String(v));
  const escape = (v) => text(v).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));

  function popup(p) {
    const rows = Object.entries(p).filter(([k, v]) => k !== "layer" && v !== "" && v !== null && typeof v !== "object");
    let html = rows.map(([k, v]) => "<b>" + escape(k) + "</b> " + escape(v)).join("<br>");
    if (p.last) html += "<br><b>last</b> " + escape(Object.entries(p.last).map(([k, v]) => k + " " + v).join(", "));
    if (p.layer === "cases") html += '<br><a href="/cases/' + encodeURIComponent(p.id) + '">open the case</a>';
    return html;
  }

  fetch(el.dataset.api, {credentials: "same-origin"}).then((r) => r.json()).then((data) => {
    const map = L.map(el, {preferCanvas: false, attributionControl: !!data.tiles});
    if (data.tiles && data.tiles.url) L.tileLayer(data.tiles.url, {attribution: escape(data.tiles.attribution), maxZoom: 20}).addTo(map);
    const groups = {};
    const bounds = L.latLngBounds([]);
    const order = ["grid", "zones", "sites", "routes", "roads", "tracks", "cameras", "sensors", "vehicles", "cases"];
    const layers = data.layers || {};
    for (const name of order) {
      if (name === "tracks") continue;  // tracks arrive inside the vehicles collection
      const fc = layers[name];
      if (!fc) continue;
      L.geoJSON(fc, {
        style: (f) => STYLE[f.properties.layer] || {},
        pointToLayer: (f, latlng) => L.circleMarker(latlng, POINT[f.properties.layer] || {radius: 5}),
        onEachFeature: (f, layer) => {
          const kind = f.properties.layer;
          (groups[kind] = groups[kind] || L.layerGroup().addTo(map)).addLayer(layer);
          layer.bindPopup(popup(f.properties));
          if (f.properties.name && ["zones", "sites", "routes", "roads"].includes(kind)) {
            layer.bindTooltip(escape(f.properties.name), {permanent: true, direction: "center", className: "place"});
          }
          if (layer.getBounds) bounds.extend(layer.getBounds()); else if (layer.getLatLng) bounds.extend(layer.getLatLng());
        },
      });
    }
    if (bounds.isValid()) map.fitBounds(bounds, {padding: [20, 20]}); else map.setView([39.9, 116.4], 12);
    const legend = document.getElementById("legend");
    legend.textContent = "";
    for (const name of order) {
      if (!groups[name]) continue;
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox"; box.checked = true; box.dataset.layer = name;
      box.addEventListener("change", () => (box.checked ? groups[name].addTo(map) : groups[name].remove()));
      label.append(box, TITLES[name] + " (" + groups[name].getLayers().length + ")");
      legend.append(label);
    }
    const crs = document.createElement("span");
    crs.className = "muted";
    crs.textContent = "coordinates: " + data.crs + (data.tiles ? "" : " · no tile server configured (web.map_tiles)");
    legend.append(crs);
    el.dataset.ready = "1";
  }).catch((err) => { el.textContent = "map data could not be loaded: " + err; });
})();
