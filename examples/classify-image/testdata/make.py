"""Regenerates the test pages: a rendered text page (black lines on white, 400x560) as PNG in
four rotations and the upright page as JPEG.

    pip install --user pillow
    python3 make.py            # writes page-0.png page-90.png page-180.png page-270.png page-0.jpg

Each file is named after the label the model should answer. Labels are CLOCKWISE: PIL's
`rotate(a)` turns counter-clockwise by `a` degrees, so rotate(90) is a page turned 270 degrees
clockwise, and the model answers "270" (checked with onnxruntime, see ../README.md).
Uses Pillow's bundled default font, so the output does not depend on the system's fonts.
"""

import os

from PIL import Image, ImageDraw, ImageFont

HERE = os.path.dirname(os.path.abspath(__file__))
WORDS = (
    "the node runs each request in a fresh instance of the component and the model is shared "
    "between requests so that loading it happens once while every handler keeps its own memory "
    "inputs are checked against the graph before the runtime sees them and errors come back as "
    "codes with a message that says what was wrong and how to fix it in the deployment"
).split()


def page():
    img = Image.new("L", (400, 560), 255)
    draw = ImageDraw.Draw(img)
    title = ImageFont.load_default(size=22)
    body = ImageFont.load_default(size=13)
    draw.text((36, 34), "Quarterly Report on Inference", font=title, fill=0)
    y, i = 82, 0
    for paragraph in range(4):
        lines = 6 if paragraph % 2 == 0 else 4
        for line in range(lines):
            words, width = [], 0
            limit = 328 if line < lines - 1 else 180  # short last lines, like real paragraphs
            while True:
                w = WORDS[i % len(WORDS)]
                size = draw.textlength(w + " ", font=body)
                if width + size > limit:
                    break
                words.append(w)
                width += size
                i += 1
            draw.text((36, y), " ".join(words), font=body, fill=0)
            y += 19
        y += 12
    return img


def main():
    upright = page()
    for label, ccw in (("0", 0), ("90", 270), ("180", 180), ("270", 90)):
        upright.rotate(ccw, expand=True).save(os.path.join(HERE, f"page-{label}.png"), optimize=True)
    upright.save(os.path.join(HERE, "page-0.jpg"), quality=50)


if __name__ == "__main__":
    main()
