"""Generate the synthetic group chat `examples/WhatsApp Chat with Amigos del Barrio.txt` and its facts file
`examples/WhatsApp Chat with Amigos del Barrio.facts.jsonl` (deterministic, no network).

Four invented neighbours in Madrid text in a WhatsApp group for four months, as an iOS export from a Spanish phone
(`[dd/mm/yy, HH:MM:SS] Name: body`), exported from Javi's phone. A second sample beside the Noa chat: another
language pair (Spanish and English), another chat shape (a group), another persona:

- **Lucía** (the persona): writes Spanish with English mixed in ("literally", "anyway", "so random"), one or two
  longer messages a turn, "jajaja", few emoji.
- **Javi**: short Spanish lines, no capitals, many "jajaja". **Marta**: Spanish with plenty of emoji.
  **Tom**: an Englishman in Madrid who writes English with the odd Spanish word; the reason the group mixes languages.

As in the Noa chat, the persona's replies depend on the message in front of them: the others ask her specific
things (the night shift at the Clínica Almendro, what Canela the dog ate, the Panda that will not start) and her
turn answers THAT question; plans (the Ruta del Cares in Asturias, the Río Verde festival, Tom's paella, her brother
Nacho's visit from Berlin) are made and come back weeks later; FACTS stay true and are written as the facts file.
A little invented personal data is planted in her messages (PLANTED_PII) for the privacy pass.

Run:  python examples/make_group_chat.py            # rewrites both files next to this script
The output depends only on SEED: the same script always writes the same bytes (tests check this).
"""

import random
from datetime import date, datetime
from pathlib import Path

import chatgen
from chatgen import Writer, fill

SEED = 20250201
START = date(2025, 2, 1)
END = date(2025, 5, 31)  # four months: ~150 conversations
GROUP = "Amigos del Barrio"
LUCIA, JAVI, MARTA, TOM = "Lucía", "Javi", "Marta", "Tom"
OTHERS = (JAVI, MARTA, TOM)
OUT = Path(__file__).resolve().parent / f"WhatsApp Chat with {GROUP}.txt"
HEADER = "[%d/%m/%y, %H:%M:%S] "  # iOS, Spanish locale
LRM = "\u200e"  # iOS opens system lines and attachments with an invisible left-to-right mark

# Invented personal data planted in Lucía's messages, for the privacy pass and the canary tests.
PLANTED_PII = {
    "phone_es": ["612 345 678", "+34 612 34 56 78"],
    "email": ["lucia.moreno.enfermera@example.com"],
    "dni": ["12345678Z"],  # valid check letter, the textbook example number
}

LAUGH = ["jajaja", "jajajaja", "jaja", "JAJAJA", "jajajajaja"]
EMOJI = ["😂", "🙈", "❤️", "🍻", "😅"]
DROPPED = ("<adjunto>", "Se eliminó este mensaje.")  # lines the dataset drops from a turn
AFTERTHOUGHTS = ["{lol}", "Anyway", "Literally", "Bueno", "So yeah", "{e}", "Y nada", "Ya os contaré",
                 "Qué le vamos a hacer"]
AFTERTHOUGHT_SHARE = 0.45  # Lucía's turns that end with one of them
VARIANTS = [", bueno", ", y nada", ", literally", ", anyway", "...", ", ya veréis", ", en fin", " de verdad"]
MARTA_EMOJI = ["😂", "😍", "🥳", "💃", "🙌", "😘", "🔥", "🥹"]

# Each topic: "qa" pairs (a friend asks Lucía, in their phrasings; her answers to THAT question), "ask" pairs (Lucía
# asks the group, someone answers), what Lucía adds after an answer, and the others' chatter among themselves.
# Slots: {lol} laughter, {e} emoji, {day}, {time}, {bar_time}.
TOPICS = {
    "bar": {
        "qa": [
            (["lucía te vienes a la bodeguita {day}?", "Lucía, Bodeguita {day}? First round is on me"],
             ["Bodeguita {day} sí, pero llego tarde porque salgo del turno a las {time}",
              "Sí!! Bodeguita {day}, guardadme sitio en la barra please",
              "Obvio que voy a la Bodeguita, literally llevo toda la semana pensando en ello"]),
            (["qué pides lucía? estoy en la barra", "Lucía what are you drinking? I'm at the bar"],
             ["Un vermut, el de siempre, con su aceituna y su naranja",
              "Vermut please, y unas bravas si quedan {lol}",
              "Lo de siempre, vermut rojo. Tom, no me traigas cerveza otra vez"]),
            (["lucía está paco hoy en la bodeguita o el sobrino?", "Is Paco working tonight Lucía?"],
             ["Paco está, y dice que le debemos la ronda del sábado {lol}",
              "Hoy está el sobrino de Paco, so no hay croquetas de las buenas",
              "Paco está y ya me ha preguntado por Tom, anyway"]),
        ],
        "ask": [
            (["Bodeguita esta noche o qué? Necesito un vermut urgentemente",
              "Alguien se apunta a la Bodeguita {day}? Salgo de la clínica a las {time}",
              "Bodeguita {day}? Literally necesito un vermut, salgo a las {time}"],
             {JAVI: ["yo voy a las 9", "voy voy"], MARTA: ["Yo me apunto!! 🍻", "Voy pero a las 10 😅"],
              TOM: ["I'm in. Paco owes me a croqueta", "Count me in, after the gym"]}),
        ],
        "chatter": {JAVI: ["quién viene", "estoy en la barra", "paco pregunta por vosotros"],
                    MARTA: ["Voy en 10 💃", "Guardadme sitio 😘", "Qué ganas 🔥"],
                    TOM: ["On my way", "Save me a stool", "First round is mine, I owe you"]},
        "lucia": ["Llego en nada, estoy saliendo de casa", "Anyway, pedidme algo que ya voy"],
    },
    "work": {
        "qa": [
            (["lucía qué turno tienes esta semana?", "Lucía are you on nights this week?"],
             ["Turno de noche en la clínica hasta el jueves, so estoy muerta",
              "Esta semana de noche en el Almendro, literally no veo la luz del sol",
              "De mañanas por fin!! La clínica me ha dado una semana normal"]),
            (["qué tal la clínica hoy lucía?", "How was the clinic today Lucía? You looked wrecked this morning"],
             ["La clínica un caos, tres ingresos a la vez y la supervisora de vacaciones",
              "Hoy bien en la Clínica Almendro, un día tranquilo for once",
              "Agotada, en el Almendro hoy parecía urgencias de un hospital grande"]),
            (["lucía tú eres enfermera no? me duele la rodilla", "Lucía, nurse question: is this bruise normal?"],
             ["Soy enfermera, no bruja {lol} pero ponte hielo y mañana me lo enseñas",
              "Como enfermera te digo: hielo, reposo y deja de correr con esas zapatillas",
              "Enfermera mode on: si sigue hinchado mañana, al médico, no a Google"]),
        ],
        "ask": [
            (["Alguien me cambia el turno del sábado? Es broma, pero ojalá",
              "Qué hacéis el domingo? Tengo el primer domingo libre en un mes",
              "Plan para {day}? Por fin libro, so proponed algo"],
             {JAVI: ["yo el domingo nada, vamos al retiro", "domingo de sofá"],
              MARTA: ["Domingo de vermut!! 🥳", "Yo libre 🙌"],
              TOM: ["Sunday market? I need vegetables and an excuse", "Free on Sunday, brunch?"]}),
        ],
        "chatter": {JAVI: ["pobre", "ánimo", "qué horror"], MARTA: ["Eres una heroína 🥹", "Ánimo guapa ❤️"],
                    TOM: ["You need a holiday", "Respect, nurses are heroes"]},
        "lucia": ["Me voy a dormir doce horas", "Anyway, mañana os cuento"],
    },
    "dog": {
        "qa": [
            (["qué ha hecho canela ahora lucía", "Lucía what did Canela eat this time?"],
             ["Canela se ha comido un calcetín de Irene, literally entero",
              "Canela ha robado un bocadillo a un señor en el parque {lol}",
              "Canela se ha comido el cargador del móvil, so estoy incomunicada"]),
            (["lucía sacas a canela luego? vamos al parque", "Walking Canela later Lucía? I'll bring the ball"],
             ["Sí, saco a Canela a las {time} al parque del Casino",
              "Canela y yo al parque a las {time}, traed la pelota",
              "Luego saco a Canela, que hoy está insoportable"]),
            (["quién cuida a canela cuando te vas lucía?", "Who's minding Canela while you're away Lucía?"],
             ["Irene se queda con Canela, que la adora",
              "Canela se queda con Irene, le he dejado una lista de tres páginas {lol}",
              "Mi compi Irene cuida a Canela, pero si me escribe Irene, id vosotros"]),
        ],
        "ask": [
            (["Alguien tiene una correa de sobra? Canela ha destrozado la suya",
              "Foto de Canela durmiendo encima de la ropa limpia, as usual",
              "Quién viene al parque con Canela {day} a las {time}?"],
             {JAVI: ["canela reina", "jajaja la tengo en casa, te la bajo"],
              MARTA: ["Es que la como 😍", "Qué cosa más bonita 🥹"],
              TOM: ["Canela is the boss of that flat", "I have an old lead, I'll drop it by"]}),
        ],
        "chatter": {JAVI: ["canela es la mejor", "jajaja esa perra"], MARTA: ["Quiero verla 😍", "Mi niña 🥹"],
                    TOM: ["Canela is a legend", "That dog has no shame"]},
        "lucia": ["<adjunto>", "Os lo juro, esta perra es un caso"],
    },
    "car": {
        "qa": [
            (["lucía ha arrancado el panda?", "Did the Panda start this morning Lucía?"],
             ["El Panda no arranca otra vez, so voy en metro",
              "El Panda ha arrancado a la tercera, milagro {lol}",
              "El Panda está muerto, literally hace un ruido de tractor"]),
            (["qué dice rafa del coche lucía?", "What did Rafa say about the car Lucía?"],
             ["Rafa dice que la batería del Panda está fatal, otra vez",
              "Rafa dice que el Panda aguanta hasta el verano, ni un día más",
              "Rafa me ha cobrado 80 euros y ha dicho 'esto no tiene arreglo' {lol}"]),
            (["me prestas el coche el sábado lucía?", "Can I borrow the car on Saturday Lucía? For IKEA"],
             ["El Panda te lo presto, pero si se para es tu problema {lol}",
              "Sí te presto el Panda, pero llévalo a Rafa si hace el ruido",
              "El coche es tuyo el sábado, pero IKEA con el Panda es mucho optimismo"]),
        ],
        "ask": [
            (["Alguien conoce un taller que no sea Rafa? Es por tener una segunda opinión",
              "El Panda ha muerto en la M-30, alguien me puede recoger?",
              "Alguien me lleva {day} a las {time}? El Panda está otra vez con Rafa"],
             {JAVI: ["voy para allá", "el de mi primo en usera"], MARTA: ["Ay no 😭", "Pobre Panda 🥹"],
              TOM: ["Sell it. Please. For your own sake", "I'll come with the jump leads"]}),
        ],
        "chatter": {JAVI: ["ese coche tiene más años que yo", "rip panda"], MARTA: ["El Panda es eterno 😂"],
                    TOM: ["That car is held together by prayers"]},
        "lucia": ["No pienso venderlo, es vintage", "Anyway, el Panda es parte de la familia"],
    },
    "food": {
        "qa": [
            (["lucía qué traes a la cena del viernes?", "What are you bringing on Friday Lucía? Please say salmorejo"],
             ["Salmorejo, obviamente, la receta de mi abuela Carmen",
              "Traigo salmorejo y pan, que el salmorejo sin pan es un crimen",
              "Salmorejo!! Y Tom, tú traes postre, not paella"]),
            (["lucía el salmorejo lleva pepino o no?", "Lucía is it true salmorejo has no cucumber?"],
             ["Ni pepino ni pimiento, eso es gazpacho, mi abuela Carmen se muere",
              "Salmorejo sin pepino, por favor, que no es gazpacho {lol}",
              "El salmorejo de Cádiz: tomate, pan, ajo y aceite, end of story"]),
            (["compras tú en el mercado lucía?", "Are you going to the market Saturday Lucía?"],
             ["Voy al mercado de San Fernando el sábado por la mañana, os traigo algo?",
              "Sí, San Fernando a las {time}, que luego se acaba el pan bueno",
              "Mercado de San Fernando el sábado sí, so pedidme lo que queráis"]),
        ],
        "ask": [
            (["Cena en mi casa el viernes? Yo pongo el salmorejo, vosotros el resto",
              "Quién se encarga del postre el viernes? Que no sea Tom porfa",
              "Cena {day} a las {time}? Yo hago salmorejo"],
             {JAVI: ["yo llevo vino", "me apunto, llevo tortilla"], MARTA: ["Yo llevo tarta!! 🥳", "Voy 😍"],
              TOM: ["I'm making paella. Don't argue", "Dessert is mine, no paella, I promise"]}),
        ],
        "chatter": {JAVI: ["qué hambre", "yo llevo pan"], MARTA: ["Qué rico 😍", "Me muero de hambre 😂"],
                    TOM: ["My paella is better than you think", "I'll bring wine"]},
        "lucia": ["Tom, la paella no, te lo suplico {lol}", "Anyway, a las nueve en mi casa"],
    },
    "family": {
        "qa": [
            (["lucía vas a cádiz en semana santa?", "Going down to Cádiz for Easter Lucía?"],
             ["Sí, bajo a Cádiz en Semana Santa, mis padres ya me han preparado la habitación",
              "Cádiz en Semana Santa, literally cuento los días",
              "Este año no bajo a Cádiz, me ha tocado trabajar {lol}"]),
            (["qué tal tu hermano en berlín lucía?", "How's your brother getting on in Berlin?"],
             ["Nacho está feliz en Berlín, pero dice que hace un frío horrible",
              "Nacho sigue en Berlín, ahora trabaja en una startup so random",
              "Hablé con Nacho ayer, Berlín le encanta pero echa de menos el sol"]),
            (["qué tal las clases de alemán lucía?", "How's the German going Lucía?"],
             ["El alemán fatal, solo sé decir 'ein Bier bitte' {lol}",
              "Sigo con alemán los martes, para visitar a Nacho en Berlín sin hacer el ridículo",
              "Alemán nivel supervivencia, so Nacho me tendrá que traducir"]),
        ],
        "ask": [
            (["Mi madre pregunta si vais a bajar a Cádiz este verano, que hay sitio",
              "Mi abuela Carmen dice que os manda besos a todos, sobre todo a Tom",
              "Llamada con Nacho {day} a las {time}, queréis saludarle?"],
             {JAVI: ["dile que sí", "tu madre es la mejor"], MARTA: ["Yo bajo!! 🥳", "Qué amor 🥹"],
              TOM: ["Tell Carmen I'm practising my Spanish", "Cádiz! I'm in, obviously"]}),
        ],
        "chatter": {JAVI: ["qué envidia", "cádiz es lo mejor"], MARTA: ["Qué bonito 🥹"],
                    TOM: ["Tell your mum I said hola"]},
        "lucia": ["Os echo de menos ya", "Anyway, ya os contaré"],
    },
    "padel": {
        "qa": [
            (["lucía pádel el jueves?", "Padel on Thursday Lucía? Marta's booking the court"],
             ["Pádel el jueves sí, pero a las {time}, que salgo tarde de la clínica",
              "Jueves de pádel, obvio, esta vez ganamos Marta y yo",
              "Pádel el jueves no puedo, turno de noche {lol}"]),
            (["quién ganó al pádel ayer", "Who won the padel last night?"],
             ["Ganamos Marta y yo al pádel, 6-3, y Javi sigue enfadado",
              "Perdimos al pádel, pero fue culpa de la pista, literally",
              "Pádel: ganamos nosotras, obviamente {lol}"]),
        ],
        "ask": [
            (["Alguien ha reservado la pista del jueves? Que luego no hay",
              "Necesito raqueta nueva, la mía tiene un agujero",
              "Pádel {day} a las {time}, quién se apunta?"],
             {JAVI: ["reservado a las 8", "yo no, marta?"], MARTA: ["Reservada!! 🙌", "Yo me encargo 😘"],
              TOM: ["I'll come and watch. From the bar", "Padel is just tennis for people who like walls"]}),
        ],
        "chatter": {JAVI: ["revancha", "el jueves os gano"], MARTA: ["Somos imbatibles 💃"],
                    TOM: ["I'll bring the beers for the losers"]},
        "lucia": ["Javi, asume la derrota {lol}", "Anyway, el jueves revancha"],
    },
    "music": {
        "qa": [
            (["lucía vas al río verde este año?", "Are you doing Río Verde this year Lucía?"],
             ["Río Verde sí o sí, ya tengo el abono",
              "Voy al Río Verde, literally es lo único que me mantiene viva",
              "Río Verde!! Pero tengo que cambiar un turno, so cruzad los dedos"]),
            (["qué escuchas ahora lucía", "What are you listening to Lucía?"],
             ["Los Cuervos de Lata en bucle, van al Río Verde",
              "Cuervos de Lata, the new album is so good",
              "Cuervos de Lata todo el día, Irene ya me odia {lol}"]),
        ],
        "ask": [
            (["Quién se apunta al Río Verde? Salen las entradas el lunes",
              "Han sacado el cartel del Río Verde, mirad esto",
              "Escuchamos el disco nuevo de Cuervos de Lata {day} en mi casa?"],
             {JAVI: ["yo voy", "cuánto cuesta"], MARTA: ["Vamos todos!! 🔥", "Qué cartelazo 😍"],
              TOM: ["I'm in if there's shade", "Is it the one with the good food trucks?"]}),
        ],
        "chatter": {JAVI: ["buenísimo", "ya tengo entrada"], MARTA: ["Qué ganas 💃"],
                    TOM: ["I need a proper hat this year"]},
        "lucia": ["<adjunto>", "Anyway, me compro el abono ya"],
    },
}

DAYS = ["mañana", "el viernes", "el sábado", "esta noche"]
TIMES = ["7", "8", "8 y media", "9", "10"]

# Plans made, then referred back to weeks later: (from this day on, topic, who asks, question, Lucía's answers).
PLANS = [
    (date(2025, 2, 12), "family", TOM, "Lucía when is Nacho coming from Berlin? You said spring",
     ["Nacho viene de Berlín el 10 de abril!! Ya os lo presento"]),
    (date(2025, 2, 20), "music", MARTA, "Lucía compramos ya las entradas del Río Verde? 🔥",
     ["Sí, compremos el Río Verde ya, que en marzo se agotan"]),
    (date(2025, 3, 3), "family", JAVI, "lucía lo de asturias va en serio? la ruta del cares en abril?",
     ["La Ruta del Cares en abril va en serio, reservad el puente de mayo no, el 25 de abril"]),
    (date(2025, 3, 6), "food", MARTA, "Lucía la cena del cumple de Tom sigue en pie? El 29? 🥳",
     ["El cumple de Tom el 29 sigue en pie, y la paella la hace él, que conste"]),
    (date(2025, 3, 28), "food", JAVI, "mañana es el cumple de tom, qué llevamos lucía",
     ["Para el cumple de Tom llevo salmorejo, y que Dios nos pille confesados con su paella"]),
    (date(2025, 3, 31), "food", TOM, "So, honestly, how was my birthday paella on Saturday Lucía?",
     ["Tu paella del cumple estaba... comestible {lol} Mejor que la de febrero, Tom"]),
    (date(2025, 4, 8), "family", MARTA, "Lucía tu hermano llega ya el jueves de Berlín? 😍",
     ["Nacho llega de Berlín el jueves a las 8, el sábado a la Bodeguita con él"]),
    (date(2025, 4, 14), "family", JAVI, "qué tal con tu hermano lucía? se ha vuelto a berlín?",
     ["Nacho se volvió a Berlín ayer, dice que Paco de la Bodeguita es su nuevo ídolo"]),
    (date(2025, 4, 21), "car", TOM, "Are we taking the Panda to Asturias Lucía? Be honest",
     ["A Asturias en el Panda no, alquilamos coche, Rafa me ha mirado con pena"]),
    (date(2025, 4, 29), "family", MARTA, "Lucía ya te has recuperado de la Ruta del Cares? Mis piernas no 😂",
     ["Del Cares no me recupero nunca, literally me duelen hasta las pestañas"]),
    (date(2025, 5, 14), "music", JAVI, "lucía el río verde es el sábado que viene no? qué día vamos",
     ["Río Verde el sábado 24, vamos en tren, el Panda se queda en casa"]),
    (date(2025, 5, 26), "music", TOM, "Lucía did you survive Río Verde? I've lost my voice",
     ["Sobreviví al Río Verde de milagro, los Cuervos de Lata fueron lo mejor"]),
    (date(2025, 5, 29), "family", JAVI, "lucía repetimos lo de asturias en otoño? el cares otra vez?",
     ["Repetimos Asturias en octubre, pero esta vez sin la Ruta del Cares entera {lol}"]),
]

# Facts that stay true, as a friend would ask about them, with the strings Lucía uses for them.
FACTS = [
    {"question": "cómo se llama tu perra?", "answers": ["Canela"], "topic": "pet"},
    {"question": "de qué trabajas, que nunca me acuerdo?", "answers": ["enfermera"], "topic": "work"},
    {"question": "en qué clínica trabajas?", "answers": ["Almendro"], "topic": "work"},
    {"question": "where are your parents from again?", "answers": ["Cádiz"], "topic": "family"},
    {"question": "cómo se llama tu hermano?", "answers": ["Nacho"], "topic": "family"},
    {"question": "en qué ciudad vive tu hermano?", "answers": ["Berlín"], "topic": "family"},
    {"question": "qué idioma estás aprendiendo?", "answers": ["alemán"], "topic": "family"},
    {"question": "cómo se llama tu abuela?", "answers": ["Carmen"], "topic": "family"},
    {"question": "cómo se llama tu compañera de piso?", "answers": ["Irene"], "topic": "home"},
    {"question": "what's our usual bar called?", "answers": ["Bodeguita"], "topic": "places"},
    {"question": "quién lleva la bodeguita?", "answers": ["Paco"], "topic": "places"},
    {"question": "qué pides siempre en el bar?", "answers": ["vermut"], "topic": "places"},
    {"question": "what car do you drive?", "answers": ["Panda"], "topic": "running joke"},
    {"question": "quién te arregla el coche?", "answers": ["Rafa"], "topic": "running joke"},
    {"question": "qué llevas siempre a las cenas?", "answers": ["salmorejo"], "topic": "food"},
    {"question": "a qué mercado vas los sábados?", "answers": ["San Fernando"], "topic": "food"},
    {"question": "what dish does Tom always ruin?", "answers": ["paella"], "topic": "running joke"},
    {"question": "qué deporte juegas los jueves?", "answers": ["pádel"], "topic": "sport"},
    {"question": "a qué festival vamos?", "answers": ["Río Verde"], "topic": "music"},
    {"question": "qué grupo escuchas todo el rato?", "answers": ["Cuervos de Lata"], "topic": "music"},
    {"question": "qué ruta hicimos en Asturias?", "answers": ["Cares"], "topic": "plans"},
]


def topic_weights(day: date) -> dict[str, float]:
    """How likely each topic is on this day: festival talk grows towards May, padel is a Thursday thing."""
    m = day.month
    return {"bar": 3.0 + (2 if day.weekday() in (4, 5) else 0), "work": 2.5, "dog": 2.0, "car": 1.5, "food": 2.0,
            "family": 1.5, "padel": 1.0 + (3 if day.weekday() == 3 else 0), "music": 0.5 + 0.5 * (m - 1)}


def attachment(w: Writer, kind: str = "PHOTO") -> str:
    """An iOS attachment line, named after the clock as WhatsApp names them."""
    return f"{LRM}<adjunto: {len(w.lines):08d}-{kind}-{w.clock.strftime('%Y-%m-%d-%H-%M-%S')}.jpg>"


class Chat:
    """The export being written, and Lucía's turns already sent (no turn is sent twice)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.w = Writer(rng, datetime(START.year, START.month, START.day, 10, 0), HEADER)
        self.seen: set[tuple[str, ...]] = set()

    def lucia(self, lines: list[str], s: dict) -> None:
        """Lucía's turn: one or two longer messages, now and then a short one after them (the odd laugh or emoji); a
        turn already sent is varied inside its last message, so that her habits stay the same all through the chat
        (adding a message to every repeat made her later turns longer than her earlier ones)."""
        rng, w = self.rng, self.w
        out = [fill(line, rng, s, LAUGH, EMOJI) for line in lines]
        if rng.random() < AFTERTHOUGHT_SHARE:
            out.append(fill(rng.choice(AFTERTHOUGHTS), rng, s, LAUGH, EMOJI))
        for _ in range(20):
            key = tuple(x for x in out if x not in DROPPED)  # what the dataset keeps of the turn
            if key not in self.seen:
                break
            kept = [i for i, x in enumerate(out) if x not in DROPPED]
            if not kept:
                break
            out[kept[-1]] = out[kept[-1]] + rng.choice(VARIANTS)
        self.seen.add(key)
        for line in out:
            w.say(LUCIA, attachment(w) if line == "<adjunto>" else line)
            w.wait(0, 2)

    def other(self, who: str, text: str, s: dict) -> None:
        text = fill(text, self.rng, s, LAUGH, MARTA_EMOJI if who == MARTA else EMOJI)
        self.w.say(who, attachment(self.w) if text == "<adjunto>" else text)
        self.w.wait(0, 6)

    def conversation(self, topic: str, extra: list[str], plan: tuple | None) -> None:
        """One conversation of about 8-16 messages: questions to Lucía that she answers, her questions, chatter."""
        rng = self.rng
        t = TOPICS[topic]
        side = TOPICS[rng.choice([k for k in TOPICS if k != topic])]
        qa = rng.sample(t["qa"], len(t["qa"])) + rng.sample(side["qa"], len(side["qa"]))
        s = {"day": rng.choice(DAYS), "time": rng.choice(TIMES)}
        target = rng.randint(8, 16)
        start = len(self.w.lines)
        if plan is not None:
            self.other(plan[2], plan[3], s)
            self.lucia([rng.choice(plan[4])], s)
        elif rng.random() < 0.35:  # Lucía opens with a question to the group, and two friends answer
            qs, answers = rng.choice(t["ask"])
            self.lucia([rng.choice(qs)] + extra, s)
            extra = []
            for who in rng.sample(OTHERS, 2):
                self.other(who, rng.choice(answers[who]), s)
        while len(self.w.lines) - start < target and qa:
            if rng.random() < 0.4:  # the others talk among themselves first
                who = rng.choice(OTHERS)
                self.other(who, rng.choice(t["chatter"][who]), s)
            asker = rng.choice(OTHERS)
            q, answers = qa.pop()
            self.other(asker, q[1] if asker == TOM else q[0], s)  # Tom asks in English, the others in Spanish
            lines = [rng.choice(answers)]
            if rng.random() < 0.35:
                lines.append(rng.choice(t["lucia"]))
            self.lucia(lines + extra, s)
            extra = []
            if rng.random() < 0.5:
                who = rng.choice([o for o in OTHERS if o != asker])
                self.other(who, rng.choice(t["chatter"][who]), s)
        if extra:
            self.lucia(extra, s)


# Conversation number -> Lucía lines to slip in: the planted personal data and an export's quirks.
SPECIALS = {
    9: ["Se eliminó este mensaje."],
    23: [f"Mi número nuevo es el {PLANTED_PII['phone_es'][0]}, el otro lo he perdido con el móvil"],
    47: [f"Para la reserva del Cares di mi móvil, {PLANTED_PII['phone_es'][1]}"],
    66: [f"Mandadme las fotos a {PLANTED_PII['email'][0]} que el WhatsApp las comprime"],
    91: [f"Para el abono del Río Verde piden DNI, el mío es {PLANTED_PII['dni'][0]}, apúntalo Marta"],
    120: ["Lista para Asturias:\n- botas\n- chubasquero\n- tiritas\n- paciencia con Tom"],
    133: ["Perdón, el jueves, no el martes <Se editó este mensaje.>"],
}


def generate(seed: int = SEED) -> str:
    """The whole export as text (ends with a newline)."""
    rng = random.Random(seed)
    chat = Chat(rng)
    w = chat.w
    w.say(GROUP, f"{LRM}Los mensajes y las llamadas están cifrados de extremo a extremo. Solo las personas en este "
                 "chat pueden leerlos, escucharlos o compartirlos.")
    w.say(GROUP, f"{LRM}{JAVI} creó el grupo \u201c{GROUP}\u201d")
    for n_conv, (_, plan, topic) in enumerate(chatgen.conversations(
            w, rng, START, END, PLANS, per_day=(20, 45, 28, 7), opens=(8, 0), gap=(120, 360),
            topic_weights=topic_weights), 1):
        chat.conversation(topic, list(SPECIALS.get(n_conv - 1, [])), plan)
        if n_conv == 40:
            w.say(GROUP, f"{LRM}{JAVI} añadió a {TOM}")  # Tom was there from the start: a re-add after a new phone
    return w.text()


if __name__ == "__main__":
    chatgen.main(__doc__.splitlines()[0], generate, FACTS, OUT, SEED)
