// Attention overlay on the captioner page in headless chromium (called by test_attention_overlay.py).
// Usage: node overlay.mjs '<json config>'; config: {baseUrl, imagePath, screenshotDir, chromium}.
// Prints one JSON report: what the overlay showed after hovering a word and moving the slider.
import { chromium } from "playwright-core";
import path from "node:path";

const config = JSON.parse(process.argv[2]);
const report = { consoleErrors: [] };
const browser = await chromium.launch({
  executablePath: config.chromium || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

// What #overlay holds now: the word it shows, its peak cell and how much of it is dimmed.
const overlayState = () => {
  const overlay = document.querySelector("#overlay");
  const canvas = overlay.querySelector("canvas");
  const state = {
    word: overlay.dataset.word ?? null,
    peakCell: overlay.dataset.peakCell ?? null,
    active: [...document.querySelectorAll("#caption .word.active")].map((s) => s.dataset.index),
    canvas: Boolean(canvas),
  };
  if (canvas) {
    const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
    let dimmed = 0, clear = 0;
    for (let i = 3; i < data.length; i += 4) (data[i] > 100 ? dimmed++ : data[i] < 40 && clear++);
    const box = canvas.getBoundingClientRect(), img = document.querySelector("#preview").getBoundingClientRect();
    Object.assign(state, { dimmed, clear, pixels: data.length / 4,
      coversImage: Math.abs(box.width - img.width) < 2 && Math.abs(box.height - img.height) < 2 });
  }
  return state;
};

try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
  page.setDefaultTimeout(60_000);
  page.on("console", (msg) => {  // a missing /favicon.ico logs "Failed to load resource"
    if (msg.type() === "error" && !msg.text().startsWith("Failed to load resource")) {
      report.consoleErrors.push(msg.text());
    }
  });
  page.on("pageerror", (err) => report.consoleErrors.push(String(err)));

  await page.goto(config.baseUrl + "/");
  report.unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll("input, select, textarea")]
      .filter((el) => el.labels.length === 0).map((el) => el.id || el.name));
  await page.setInputFiles("#file", config.imagePath);
  await page.click("#submit");
  await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("Caption:"));
  await page.waitForFunction(() => document.querySelector("#preview").complete);
  report.words = await page.evaluate(() =>
    [...document.querySelectorAll("#caption .word")].map((s) => s.textContent));
  report.sliderShown = await page.evaluate(() => !document.querySelector("#looked").hidden);
  report.sliderMax = await page.evaluate(() => Number(document.querySelector("#word-slider").max));
  report.beforeHover = await page.evaluate(overlayState);

  await page.hover("#caption .word[data-index='1']");
  report.hover = await page.evaluate(overlayState);
  await page.screenshot({ path: path.join(config.screenshotDir, "attention-hover.png") });

  await page.mouse.move(5, 5);  // leave the caption: the overlay clears
  report.afterLeave = await page.evaluate(overlayState);

  await page.focus("#word-slider");
  await page.keyboard.press("End");  // keyboard: the slider jumps to the last word
  report.slider = await page.evaluate(overlayState);
  await page.screenshot({ path: path.join(config.screenshotDir, "attention-slider.png") });
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
