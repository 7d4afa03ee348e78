"""A small live training curve (loss, and validation Dice on its own 0-1 scale), drawn with QPainter.

matplotlib is not a napari dependency, so the curve draws itself; adding a point is cheap (a list
append and a repaint request), which keeps the GUI thread free while training runs.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOR = QColor(255, 140, 0)
DICE_COLOR = QColor(80, 170, 255)


class LossPlot(QWidget):
    """Training loss against step (left scale from 0 to the largest loss) and validation Dice (right, 0-1)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.loss: list[tuple[int, float]] = []
        self.val_dice: list[tuple[int, float]] = []
        self.total_steps = 1
        self.dice_label = "val Dice"  # "val Dice (painted px)" when scored on scribbles' painted pixels only
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)

    def clear(self, total_steps: int = 1) -> None:
        self.loss.clear()
        self.val_dice.clear()
        self.total_steps = max(1, total_steps)
        self.update()

    def add_loss(self, step: int, loss: float) -> None:
        if math.isfinite(loss):
            self.loss.append((step, loss))
            self.update()

    def add_val_dice(self, step: int, dice: float) -> None:
        if math.isfinite(dice):
            self.val_dice.append((step, dice))
            self.update()

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        text_color = self.palette().color(self.foregroundRole())
        area = QRectF(self.rect()).adjusted(34, 18, -34, -16)
        painter.setPen(QPen(text_color, 1))
        painter.drawRect(area)
        top_loss = max((value for _, value in self.loss), default=1.0) or 1.0
        painter.drawText(QRectF(0, area.top() - 6, 32, 12), Qt.AlignRight | Qt.AlignVCenter, f"{top_loss:.2g}")
        painter.drawText(QRectF(0, area.bottom() - 6, 32, 12), Qt.AlignRight | Qt.AlignVCenter, "0")
        painter.drawText(QRectF(area.right() + 3, area.top() - 6, 32, 12), Qt.AlignLeft | Qt.AlignVCenter, "1")
        painter.drawText(QRectF(area.right() + 3, area.bottom() - 6, 32, 12), Qt.AlignLeft | Qt.AlignVCenter, "0")
        legend = []
        if self.loss:
            legend.append((LOSS_COLOR, f"loss {self.loss[-1][1]:.4f}"))
            self._curve(painter, area, self.loss, top_loss, LOSS_COLOR)
        if self.val_dice:
            legend.append((DICE_COLOR, f"{self.dice_label} {self.val_dice[-1][1]:.3f}"))
            self._curve(painter, area, self.val_dice, 1.0, DICE_COLOR, dots=True)
        x = area.left()
        for color, text in legend:
            painter.setPen(QPen(color, 1))
            width = painter.fontMetrics().horizontalAdvance(text) + 16
            painter.drawText(QRectF(x, 0, width, 16), Qt.AlignLeft | Qt.AlignVCenter, text)
            x += max(150, width)
        painter.end()

    def _curve(self, painter: QPainter, area: QRectF, points, top: float, color: QColor, dots: bool = False) -> None:
        def at(step: int, value: float) -> QPointF:
            return QPointF(
                area.left() + area.width() * min(step / self.total_steps, 1.0),
                area.bottom() - area.height() * min(max(value / top, 0.0), 1.0),
            )

        painter.setPen(QPen(color, 1.5))
        path = QPainterPath(at(*points[0]))
        for point in points[1:]:
            path.lineTo(at(*point))
        painter.drawPath(path)
        if dots:
            for point in points:
                painter.drawEllipse(at(*point), 2.5, 2.5)
