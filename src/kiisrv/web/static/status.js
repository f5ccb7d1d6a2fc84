// The status page's charts (status.py embeds the figures as JSON in #figures).
"use strict";
const figures = JSON.parse(document.getElementById("figures").textContent);
const options = (title, extra = {}) => ({
  responsive: true, maintainAspectRatio: false, animation: false,
  plugins: { title: { display: true, text: title } }, ...extra,
});
new Chart(document.getElementById("perDay"), {
  type: "bar",
  options: options("Builds per day", {
    scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } },
  }),
  data: {
    labels: figures.perDay.map((d) => d.day),
    datasets: [
      { label: "succeeded", data: figures.perDay.map((d) => d.succeeded), backgroundColor: "#3a7" },
      { label: "failed", data: figures.perDay.map((d) => d.failed), backgroundColor: "#c44" },
    ],
  },
});
new Chart(document.getElementById("keyboards"), {
  type: "bar",
  options: options("Top keyboards (requests)", { indexAxis: "y" }),
  data: {
    labels: figures.keyboards.map((k) => k.keyboard),
    datasets: [{ label: "requests", data: figures.keyboards.map((k) => k.requests), backgroundColor: "#47a" }],
  },
});
new Chart(document.getElementById("buildTime"), {
  type: "bar",
  options: options("Build time of successful builds (s)"),
  data: {
    labels: Object.keys(figures.seconds),
    datasets: [{ label: "seconds", data: Object.values(figures.seconds), backgroundColor: "#a74" }],
  },
});
